"""Ctrl-C and SIGTERM during training: finish the step, checkpoint, exit with how to resume.

A preempted cloud VM or a Kubernetes eviction sends SIGTERM, a user presses Ctrl-C (SIGINT).
Inside :class:`StopSignals` the first signal only sets a flag, which the Trainer checks after
every step; it then saves a checkpoint and raises :class:`~tfllm.errors.Interrupted`. A second
Ctrl-C aborts at once (Python's usual ``KeyboardInterrupt``), without the checkpoint.

    >>> with StopSignals() as stop:
    ...     while training:
    ...         step()
    ...         if stop.received:
    ...             save(); raise stop.interrupted(step, run_dir)
"""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Optional

from tfllm.errors import Interrupted

log = logging.getLogger("tfllm")
HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Turn SIGINT/SIGTERM into a stop request for the duration of a ``with`` block."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for number in HANDLED:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number, frame) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, no checkpoint
        self.received = number
        log.warning("%s received: stopping after this step and saving a checkpoint%s",
                    signal.Signals(number).name,
                    " (Ctrl-C again to abort without one)" if number == signal.SIGINT else "")

    def interrupted(self, step: int, run_dir: Path) -> Interrupted:
        name = signal.Signals(self.received).name
        return Interrupted(f"{name} at step {step}: checkpoint saved; continue with "
                           f"python -m tfllm.train --resume output_dir={run_dir}",
                           exit_code=128 + int(self.received))
