"""Numpy-side metrics for every task, plus class weights for imbalanced classification.

Sections: regression (STS-B-style float targets), multi-label classification (GoEmotions-style
label sets, with per-label thresholds tuned on dev data) and class weights. No TensorFlow here:
inputs are numpy arrays of model outputs and targets.

    >>> regression_metrics(np.array([0.1, 2.0, 4.2]), np.array([0.0, 2.5, 5.0]))["pearson"]
    >>> thresholds = tune_thresholds(dev_probabilities, dev_targets)        # [labels]
    >>> multilabel_metrics(test_probabilities, test_targets, names, thresholds)["macro_f1"]
    >>> class_weights(train_ids, 2, {"neg": 3.0}, ["neg", "pos"])           # [3.0, 1.0]
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Union

import numpy as np
from scipy import stats
from sklearn.metrics import (accuracy_score, classification_report, f1_score, hamming_loss,
                             precision_recall_fscore_support)

from tfllm.errors import TfllmError

DEFAULT_THRESHOLD = 0.5
DEFAULT_GRID = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05, 0.10, ..., 0.95
CLASS_WEIGHTS_KEY = "config key train.class_weights"
NAMES_SHOWN = 20  # how many label names an error lists


# --- regression -----------------------------------------------------------------------------

def regression_metrics(predictions, targets) -> dict:
    """Pearson and Spearman correlation, MSE and MAE; a correlation with a constant side is 0.0."""
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    _check_same_shape(predictions, targets, "predictions", "targets")
    if predictions.size == 0:
        raise ValueError("regression_metrics: no examples")
    errors = predictions - targets
    return {
        "examples": int(predictions.size),
        "pearson": correlation(stats.pearsonr, predictions, targets),
        "spearman": correlation(stats.spearmanr, predictions, targets),
        "mse": float(np.mean(errors ** 2)),
        "mae": float(np.mean(np.abs(errors))),
    }


def correlation(method, x: np.ndarray, y: np.ndarray) -> float:
    """``method(x, y)``'s statistic; 0.0 when a side is constant (scipy: a warning and nan)."""
    if x.size < 2 or _is_constant(x) or _is_constant(y):
        return 0.0
    with warnings.catch_warnings():  # nearly-constant input: scipy warns but the value stands
        warnings.simplefilter("ignore")
        return float(method(x, y)[0])


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


# --- multi-label classification -------------------------------------------------------------

def tune_thresholds(probabilities, targets, grid: Optional[Sequence[float]] = None) -> np.ndarray:
    """Per label, the grid threshold with the best F1 on this data (ties: closest to 0.5, then the
    lower); a label without positives here keeps 0.5."""
    probabilities, targets = _multilabel_arrays(probabilities, targets)
    grid = _threshold_grid(grid)
    return np.array([best_threshold(probabilities[:, j], targets[:, j], grid)
                     for j in range(targets.shape[1])], dtype=np.float64)


def best_threshold(probabilities: np.ndarray, targets: np.ndarray, grid: np.ndarray) -> float:
    """One label's F1-maximising threshold from ``grid`` (see :func:`tune_thresholds`)."""
    positive = targets.astype(bool)
    if not positive.any():
        return DEFAULT_THRESHOLD
    predicted = probabilities[:, None] >= grid[None, :]  # [examples, grid]
    tp = (predicted & positive[:, None]).sum(0)
    fp = (predicted & ~positive[:, None]).sum(0)
    fn = positive.sum() - tp
    f1 = 2 * tp / (2 * tp + fp + fn)  # fn >= 1 when tp == 0, so never 0/0
    best = np.flatnonzero(f1 == f1.max())
    distance = np.round(np.abs(grid[best] - DEFAULT_THRESHOLD), 9)
    return float(grid[best[np.argmin(distance)]])


def multilabel_metrics(probabilities, targets, names: Sequence[str],
                       thresholds: Union[None, float, Sequence[float]] = None) -> dict:
    """Micro/macro F1, micro precision/recall, subset accuracy, Hamming loss, per-label scores and
    scikit-learn's text report, predicting a label where its probability >= its threshold."""
    probabilities, targets = _multilabel_arrays(probabilities, targets)
    names = [str(n) for n in names]
    if len(names) != targets.shape[1]:
        raise ValueError(f"multilabel_metrics: {len(names)} names for {targets.shape[1]} labels")
    thresholds = _label_thresholds(thresholds, len(names))
    predicted = (probabilities >= thresholds[None, :]).astype(np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, average=None, zero_division=0)
    micro_p, micro_r, micro_f1, _ = precision_recall_fscore_support(
        targets, predicted, average="micro", zero_division=0)
    return {
        "examples": int(targets.shape[0]),
        "micro_f1": float(micro_f1),
        "macro_f1": float(f1_score(targets, predicted, average="macro", zero_division=0)),
        "micro_precision": float(micro_p),
        "micro_recall": float(micro_r),
        "subset_accuracy": float(accuracy_score(targets, predicted)),
        "hamming_loss": float(hamming_loss(targets, predicted)),
        "per_label": {name: {"precision": float(precision[j]), "recall": float(recall[j]),
                             "f1": float(f1[j]), "support": int(support[j]),
                             "threshold": float(thresholds[j])}
                      for j, name in enumerate(names)},
        "report": classification_report(targets, predicted, target_names=names, digits=4,
                                        zero_division=0),
    }


def _multilabel_arrays(probabilities, targets) -> tuple[np.ndarray, np.ndarray]:
    """``[examples, labels]`` float probabilities and 0/1 int targets, or a ValueError."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.ndim != 2:
        raise ValueError(f"expected [examples, labels] probabilities, not {probabilities.shape}")
    _check_same_shape(probabilities, targets, "probabilities", "targets")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("multi-label targets must be 0/1 (multi-hot)")
    return probabilities, targets.astype(np.int64)


def _threshold_grid(grid: Optional[Sequence[float]]) -> np.ndarray:
    grid = DEFAULT_GRID if grid is None else np.unique(np.asarray(grid, dtype=np.float64))
    if grid.ndim != 1 or grid.size == 0 or not np.all((grid >= 0) & (grid <= 1)):
        raise ValueError(f"threshold grid must be a non-empty list of values in [0, 1], got {grid}")
    return grid


def _label_thresholds(thresholds, labels: int) -> np.ndarray:
    if thresholds is None:
        return np.full(labels, DEFAULT_THRESHOLD)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (labels,))
    return np.array(thresholds)


def _check_same_shape(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} shape {a.shape} != {b_name} shape {b.shape}")


# --- class weights --------------------------------------------------------------------------

def class_weights(label_ids, num_labels: int, spec: Union[None, str, dict],
                  names: Sequence[str]) -> Optional[np.ndarray]:
    """Float32 ``[num_labels]`` loss weights: ``"balanced"`` (n / (classes * count)), a
    ``{label name: weight}`` dict (others 1.0), or None for no weighting."""
    if spec is None:
        return None
    names = [str(n) for n in names]
    if len(names) != num_labels:
        raise ValueError(f"class_weights: {len(names)} names for {num_labels} labels")
    if isinstance(spec, str) and spec == "balanced":
        return balanced_weights(np.asarray(label_ids, dtype=np.int64), names)
    if isinstance(spec, dict):
        return named_weights(spec, names)
    raise TfllmError(f"{CLASS_WEIGHTS_KEY}: expected 'balanced' or {{label: weight}}, got {spec!r}")


def balanced_weights(label_ids: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """scikit-learn's "balanced" weights; every class needs training examples."""
    counts = np.bincount(label_ids.reshape(-1), minlength=len(names))
    if counts.size > len(names):
        raise ValueError(f"class_weights: label id {counts.size - 1} >= {len(names)} labels")
    absent = [names[j] for j in np.flatnonzero(counts == 0)]
    if absent:
        raise TfllmError(f"{CLASS_WEIGHTS_KEY}: 'balanced' cannot weight "
                         f"{_quoted(absent)}: no training examples (give weights by name instead)")
    return (counts.sum() / (len(names) * counts)).astype(np.float32)


def named_weights(spec: dict, names: Sequence[str]) -> np.ndarray:
    """Weights given by label name; unnamed labels weigh 1.0."""
    index = {name: j for j, name in enumerate(names)}
    weights = np.ones(len(names), dtype=np.float32)
    for name, value in spec.items():
        if str(name) not in index:
            raise TfllmError(f"{CLASS_WEIGHTS_KEY}: unknown label {str(name)!r} "
                             f"(labels: {', '.join(names[:NAMES_SHOWN])})")
        weights[index[str(name)]] = _positive_weight(value, str(name))
    return weights


def _positive_weight(value, name: str) -> float:
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if number is None or not math.isfinite(number) or number <= 0:
        raise TfllmError(f"{CLASS_WEIGHTS_KEY}.{name}: weight must be a positive finite number, "
                         f"got {value!r}")
    return number


def _quoted(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:NAMES_SHOWN])
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return f"label{'s' if len(names) > 1 else ''} {shown}{more}"
