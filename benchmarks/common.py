"""Helpers shared by the benchmark scripts (finetune, pretrain, compress).

* :func:`matmul_flops` - the machine's large-fp32-matmul FLOP/s, the yardstick for "fraction of peak";
* :class:`StepTimer` - a Keras callback that timestamps every training step, so throughput can be
  measured after a warm-up inside one ``model.fit`` call;
* :func:`padding_stats` / :func:`training_flops_per_sequence` - what a batch stream costs;
* :func:`read_scalars` - TensorBoard scalars of a run, without the tensorboard package;
* :func:`scored_run` - a finished run's weights scored on a dev file in a given precision;
* :func:`paired_difference` - an accuracy difference on the same examples, with a bootstrap interval;
* :func:`markdown_table`, :func:`result_line` - output formatting;
* :func:`machine_info`, :func:`machine_line`, :func:`write_report` (from :mod:`benchmarks.machine`)
  - the CPU a benchmark ran on, and its generated report in ``benchmarks/results/<name>.md``.

Import this module after ``tfllm`` (it selects Keras 2 before TensorFlow loads).
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tfllm  # noqa: E402,F401  (Keras 2 before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from tfllm.inference import Predictor  # noqa: E402
from benchmarks.machine import (ISA_FLAGS, git_commit, machine_info, machine_line,  # noqa: E402,F401
                                report_header, write_report)

SHARED_DATA = ROOT.parent / "shared" / "data"


# --- the machine ----------------------------------------------------------------------------
def matmul_flops(n: int = 2048, runs: int = 10, warmup: int = 2, dtype=tf.float32) -> dict:
    """FLOP/s of an ``n x n`` by ``n x n`` ``tf.matmul`` (2 n^3 FLOPs), timed run by run.

    Returns ``{"median": ..., "best": ..., "n": n, "runs": runs}``; the median is the figure to
    compare with (the best shows how much a busy machine disturbed it).
    """
    a = tf.random.stateless_normal([n, n], seed=[1, 2], dtype=dtype)
    b = tf.random.stateless_normal([n, n], seed=[3, 4], dtype=dtype)
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    for _ in range(warmup):
        matmul(a, b).numpy()
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        matmul(a, b).numpy()  # .numpy() waits for the result
        rates.append(2 * n ** 3 / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "best": max(rates), "n": n, "runs": runs}


# --- statistics -----------------------------------------------------------------------------
def paired_difference(correct: Sequence[bool], reference: Sequence[bool], samples: int = 10000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of ``correct`` minus ``reference`` (per-example hits on the same examples), in
    points, with a 95% paired-bootstrap interval: ``(difference, low, high)``.

    On 872 SST-2 dev phrases one phrase is 0.11 points; the interval shows how much of a
    difference the dev set can resolve.
    """
    a, b = np.asarray(correct, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_difference needs two equal, non-empty lists ({a.size} vs {b.size})")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, a.size, size=(samples, a.size))
    differences = 100 * (a[picks].mean(axis=1) - b[picks].mean(axis=1))
    low, high = np.percentile(differences, [2.5, 97.5])
    return 100 * float(a.mean() - b.mean()), float(low), float(high)


# --- timing ---------------------------------------------------------------------------------
class StepTimer(tf_keras.callbacks.Callback):
    """Timestamps the training steps of ``model.fit``: the start of the first, the end of each.

    A plain callback makes Keras convert each step's logs to numpy, i.e. wait for the step to
    finish, so the timestamps bracket whole steps (input pipeline included). Exclude tracing either
    by a warm-up ``fit`` call before the timed one (the train function is cached), or by
    ``skip``-ping the first steps in :meth:`rate`.
    """

    def __init__(self):
        super().__init__()
        self.start: Optional[float] = None
        self.ends: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    @property
    def steps(self) -> int:
        return len(self.ends)

    def seconds(self, skip: int = 0) -> float:
        """Wall time of the steps after the first ``skip`` ones."""
        if self.steps <= skip:
            raise ValueError(f"only {self.steps} steps ran; cannot skip {skip}")
        return self.ends[-1] - (self.ends[skip - 1] if skip else self.start)

    def rate(self, examples_per_step: float, skip: int = 0) -> float:
        """Examples per second over the steps after the first ``skip`` ones."""
        return (self.steps - skip) * examples_per_step / self.seconds(skip)


# --- what a batch stream costs --------------------------------------------------------------
def padding_stats(real_lengths: Iterable[Sequence[int]], widths: Iterable[int]) -> dict:
    """Padding of a stream of batches: each batch is its examples' real lengths and its width.

    Returns examples, real and padded token counts, the mean padded length, the padding fraction
    (padded-but-not-real tokens / padded tokens) and the mean of width^2 (for attention FLOPs).
    """
    examples = real = padded = squares = 0
    for lengths, width in zip(real_lengths, widths):
        k = len(lengths)
        examples += k
        real += int(np.sum(lengths))
        padded += k * int(width)
        squares += k * int(width) ** 2
    if examples == 0:
        raise ValueError("no batches")
    return {"examples": examples, "real_tokens": real, "padded_tokens": padded,
            "mean_length": padded / examples, "mean_real_length": real / examples,
            "mean_length_sq": squares / examples, "padding_fraction": 1 - real / padded}


def non_embedding_params(model) -> int:
    """Trainable parameters outside the embedding tables (and their LayerNorm)."""
    return int(sum(np.prod(v.shape) for v in model.trainable_variables if "embeddings" not in v.name))


def training_flops_per_sequence(params: int, layers: int, hidden: int, mean_length: float,
                                mean_length_sq: float) -> float:
    """Forward+backward FLOPs per sequence: ``6 N L + 12 n_layers d L^2``.

    ``6 N`` per token is the dense layers (2 FLOPs per multiply-add, backward twice the forward);
    ``12 n_layers d L^2`` is the attention scores ``QK^T`` and ``AV`` (2 x 2 L^2 d forward per
    layer, times 3). ``L`` counts padded positions: that is what the hardware computes.
    """
    return 6.0 * params * mean_length + 12.0 * layers * hidden * mean_length_sq


# --- TensorBoard ----------------------------------------------------------------------------
def read_scalars(logdir: Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of one scalar from every event file in ``logdir`` (later files win)."""
    values: dict[int, float] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag != tag:
                    continue
                number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                          else float(value.simple_value))
                values[int(event.step)] = number
    return values


def scored_run(run_dir: Path, dev_file: str, precision: str) -> Path:
    """A finished run's final weights scored on ``dev_file`` computing in ``precision``
    (``float32`` or ``bfloat16``), as ``python -m tfllm.evaluate RUN --precision P`` scores them;
    written once to ``RUN/eval/dev_<precision>``. Returns that folder (predictions.csv, metrics.json)."""
    out = Path(run_dir) / "eval" / f"dev_{precision}"
    if not (out / "metrics.json").is_file():
        Predictor.load(run_dir, precision=precision).evaluate(dev_file, out)
    return out


# --- output ---------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table; cells are printed with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def result_line(**values) -> str:
    """``RESULT k=v ...`` with floats to 4 significant digits (None prints as ``nan``)."""
    def fmt(v):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "nan"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return "RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def human(value: float, unit: str = "") -> str:
    """``1.23e9`` -> ``1.23 G`` (+ unit)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()
