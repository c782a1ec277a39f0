"""Console progress and TensorBoard event files for a run (train/ and dev/ writers).

On a terminal, training shows a live progress bar (Keras' ``Progbar``: step, loss, rate, ETA)
and evaluation / prediction a bar per pass; when the output is a file or a pipe (CI, logs,
``nohup``), plain log lines every ``train.log_every`` steps instead.
"""
from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras
from matplotlib.figure import Figure  # not pyplot: never changes the caller's backend

from tfllm import rundir

log = logging.getLogger("tfllm")


class RunReporter:
    """Writes scalars, the confusion matrix image and the config text under ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path, total_steps: int, live: Optional[bool] = None):
        self.train_writer = tf.summary.create_file_writer(str(run_dir / rundir.TENSORBOARD / "train"))
        self.dev_writer = tf.summary.create_file_writer(str(run_dir / rundir.TENSORBOARD / "dev"))
        self.total_steps = total_steps
        self.started = time.time()
        self.last_time, self.last_step = self.started, None
        self.bar = progress_bar(total_steps, "step") if (on_terminal() if live is None else live) else None

    def step(self, step: int, loss: float) -> None:
        """Every step: move the live bar (on a terminal)."""
        if self.bar is not None:
            self.bar.update(step, [("loss", loss)])

    def config_text(self, text: str, step: int = 0) -> None:
        with self.train_writer.as_default():
            tf.summary.text("config", "```\n" + text + "\n```", step=step)
        self.train_writer.flush()

    def train(self, step: int, logs: dict, examples_per_step: Optional[float] = None) -> None:
        now = time.time()
        rate = ""
        if self.last_step is not None and step > self.last_step:
            per_step = (now - self.last_time) / (step - self.last_step)
            eta = per_step * (self.total_steps - step)
            rate = f" | {1 / per_step:.2f} steps/s, eta {eta / 60:.1f} min"
            if examples_per_step:
                logs = dict(logs, examples_per_sec=examples_per_step / per_step)
        self.last_time, self.last_step = now, step
        self._scalars(self.train_writer, step, logs)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in logs.items() if k != "examples_per_sec")
        if self.bar is None:  # on a terminal the bar shows the step, loss, rate and ETA
            log.info("step %d/%d %s%s", step, self.total_steps, shown, rate)

    def dev(self, step: int, metrics: dict, images: Optional[dict] = None) -> None:
        """Dev scalars, and images such as a confusion matrix (``{name: RGBA uint8 array}``)."""
        self._scalars(self.dev_writer, step, metrics)
        if images:
            with self.dev_writer.as_default():
                for name, image in images.items():
                    tf.summary.image(name, image[None], step=step)
            self.dev_writer.flush()
        log.info("dev @ step %d: %s", step, " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))

    @staticmethod
    def _scalars(writer, step: int, values: dict) -> None:
        with writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, float(value), step=step)
        writer.flush()

    def close(self) -> None:
        self.train_writer.close()
        self.dev_writer.close()

    def __enter__(self) -> "RunReporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def on_terminal() -> bool:
    """Whether progress goes to a person watching a terminal (not a log file or a pipe); Keras'
    ``Progbar`` writes to stdout."""
    return sys.stdout.isatty()


def progress_bar(total: int, unit: str = "step"):
    """A live Keras progress bar (loss as given, rate and ETA) counting ``unit`` up to ``total``."""
    return tf_keras.utils.Progbar(total, stateful_metrics=["loss"], unit_name=unit)


def batch_bar(batches: int):
    """A progress bar over an evaluation or prediction pass, on a terminal and for 2+ batches."""
    return progress_bar(batches, "batch") if on_terminal() and batches > 1 else None


def write_dev_scalars(run_dir: Path, step: int, metrics: dict) -> None:
    """Add one step's dev scalars to ``run_dir/tensorboard/dev`` (e.g. the final evaluation)."""
    writer = tf.summary.create_file_writer(str(run_dir / rundir.TENSORBOARD / "dev"))
    RunReporter._scalars(writer, step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    writer.close()


def _fmt(value) -> str:
    value = float(value)
    return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def confusion_figure(matrix: np.ndarray, label_names: Optional[Sequence[str]] = None):
    """A matplotlib figure of a confusion matrix (counts, rows = true labels)."""
    n = matrix.shape[0]
    names = list(label_names) if label_names else [str(i) for i in range(n)]
    size = min(4 + 0.35 * n, 24)
    fig = Figure(figsize=(size, size), dpi=80)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=90 if n > 4 else 0, fontsize=8 if n > 20 else 10)
    ax.set_yticks(range(n), names, fontsize=8 if n > 20 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def confusion_image(matrix: np.ndarray, label_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """The confusion matrix rendered as an RGBA uint8 array (for TensorBoard)."""
    buffer = io.BytesIO()
    confusion_figure(matrix, label_names).savefig(buffer, format="png")
    return tf.io.decode_png(buffer.getvalue(), channels=4).numpy()
