"""Fault injection for tests: ``TFLLM_KILL_AT=<point>[:<n>]`` kills the process with SIGKILL the
n-th time (default 1st) it reaches ``kill_point("<point>")``. Points: ``checkpoint_saved``,
``directory_written`` / ``directory_moved_aside`` (the two renames of a directory swap, e.g.
``model/``) and ``file_written/<file name>`` (a file written but not yet renamed into place).

The points sit where an interruption is most harmful (between writing a file and renaming it,
between the two renames of a directory swap, right after a checkpoint is written), so tests can
show that a ``kill -9`` there leaves a run that ``--resume``, evaluate, predict and export use.
Without the variable a point costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def kill_point(name: str) -> None:
    spec = os.environ.get("TFLLM_KILL_AT")
    if not spec:
        return
    point, _, count = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
