"""Regression: a float per text or sentence pair (``train.task: regression``), e.g. STS-B similarity.

Hugging Face's ``TFBertForSequenceClassification`` with ``num_labels=1`` gives one output; the
loss is the mean squared error. Monitors dev Pearson correlation (streamed over the dev set);
the final report adds Spearman, MSE and MAE and writes ``eval/dev/predictions.csv``.

    >>> cfg = load_config("configs/stsb_minilm.yaml")      # label_column: score (0-5)
    >>> run_dir = run_training(cfg)
    >>> Predictor.load(run_dir).predict(["A man plays a flute."], ["A man plays a guitar."])
    [{'text': 'A man plays a flute.', 'text_pair': 'A man plays a guitar.', 'score': 2.1}]
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras
from transformers import TFBertForSequenceClassification

from tfllm import io, rundir
from tfllm.data.readers import Examples
from tfllm.data.splits import read_splits
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.errors import TfllmError
from tfllm.metrics import regression_metrics
from tfllm.models.base import TaskModel
from tfllm.models.checkpoints import load_pretrained, resolve_checkpoint
from tfllm.models.freezing import apply_freezing
from tfllm.tasks.base import Task, TaskData, plan_splits, register
from tfllm.tasks.classification import log_lengths

log = logging.getLogger("tfllm")


class PearsonCorrelation(tf_keras.metrics.Metric):
    """Pearson's r between predictions and targets, streamed as sums over the whole set."""

    def __init__(self, name: str = "pearson", **kwargs):
        super().__init__(name=name, **kwargs)
        self.sums = self.add_weight("sums", shape=(6,), initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        x, y = tf.cast(y_pred, tf.float64), tf.cast(y_true, tf.float64)
        n = tf.cast(tf.size(x), tf.float64)
        self.sums.assign_add(tf.stack([n, tf.reduce_sum(x), tf.reduce_sum(y), tf.reduce_sum(x * y),
                                       tf.reduce_sum(x * x), tf.reduce_sum(y * y)]))

    def result(self):
        n, sx, sy, sxy, sxx, syy = tf.unstack(self.sums)
        cov = n * sxy - sx * sy
        var = tf.sqrt(tf.maximum(n * sxx - sx * sx, 0.0) * tf.maximum(n * syy - sy * sy, 0.0))
        return tf.cast(tf.math.divide_no_nan(cov, var), tf.float32)

    def reset_state(self):
        self.sums.assign(tf.zeros_like(self.sums))


class BertRegressor(TaskModel):
    """``call`` returns the float32 prediction ``[batch]``; the loss is the squared error."""

    def __init__(self, bert, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert
        self.pearson = PearsonCorrelation()
        self.mse = tf_keras.metrics.MeanSquaredError(name="mse")

    def call(self, inputs, training=False):
        return tf.cast(self.bert(inputs, training=training).logits[:, 0], tf.float32)

    def per_example_loss(self, x, y, training):
        predicted = self(x, training=training)
        return tf.square(predicted - tf.cast(y, tf.float32)), predicted

    def update_task_metrics(self, y, predicted, sample_weight):
        self.pearson.update_state(y, predicted)
        self.mse.update_state(y, predicted)

    def task_metrics(self):
        return [self.pearson, self.mse]

    def save_pretrained(self, directory: str) -> None:
        self.bert.save_pretrained(directory)


@dataclass
class RegressionData(TaskData):
    dev_examples: Examples = None


def float_targets(examples: Examples) -> np.ndarray:
    """The label column as float32; a value that is not a finite number names its row."""
    values = np.empty(len(examples), dtype=np.float32)
    for row, text in enumerate(examples.labels):
        try:
            values[row] = float(text)
        except ValueError:
            values[row] = np.nan
        if not math.isfinite(values[row]):
            raise TfllmError(f"{examples.source} row {row + 1}: target {text!r} is not a number "
                             "(regression needs a float in the label column)")
    return values


@register
class RegressionTask(Task):
    name = "regression"
    head = "TFBertForSequenceClassification"
    monitor = "pearson"
    higher_is_better = True

    def load_data(self, resume: bool = False) -> RegressionData:
        cfg = self.cfg
        train, dev = read_splits(cfg.data, cfg.train.seed)
        targets = float_targets(train), float_targets(dev)
        tokenizer = load_tokenizer(resolve_checkpoint(cfg.model.checkpoint))
        log.info("data: %d train / %d dev examples; train targets %.3g to %.3g (mean %.3g)",
                 len(train), len(dev), targets[0].min(), targets[0].max(), targets[0].mean())
        encoded = [encode_texts(tokenizer, e.texts, e.pairs, cfg.data.max_length, t)
                   for e, t in zip((train, dev), targets)]
        log_lengths(encoded[0], cfg.data.max_length)
        return RegressionData(tokenizer, *plan_splits(cfg, *encoded), dev)

    def build_model(self, data: RegressionData):
        cfg = self.cfg
        bert, report = load_pretrained(
            TFBertForSequenceClassification, cfg.model.checkpoint, num_labels=1, problem_type="regression",
            hidden_dropout_prob=cfg.model.hidden_dropout, attention_probs_dropout_prob=cfg.model.attention_dropout,
            classifier_dropout=cfg.model.classifier_dropout)
        apply_freezing(bert.bert, cfg.model.freeze_embeddings, cfg.model.freeze_layers)
        return BertRegressor(bert, grad_accum_steps=cfg.train.grad_accum_steps,
                             max_grad_norm=cfg.train.max_grad_norm), report

    def write_report(self, run_dir: Path, data: RegressionData, outputs) -> dict:
        return write_regression_report(run_dir / rundir.EVAL / "dev", data.dev_examples,
                                       np.asarray(outputs), data.dev.encoded.labels,
                                       f"dev ({data.dev_examples.source})")

    def check_model(self, hf_model, where: Path) -> None:
        if hf_model.config.num_labels != 1:
            raise TfllmError(f"{where / rundir.MODEL}: predicts {hf_model.config.num_labels} labels, "
                             "not one score; not a regression run's model")

    def wrap_model(self, hf_model) -> BertRegressor:
        return BertRegressor(hf_model)

    def rows(self, texts, pairs, outputs, encoded, tokenizer) -> list[dict]:
        rows = []
        for i, score in enumerate(np.asarray(outputs).reshape(-1)):
            row = {"text": texts[i]} if pairs is None else {"text": texts[i], "text_pair": pairs[i]}
            rows.append({**row, "score": round(float(score), 6)})
        return rows

    def serving_outputs(self, logits) -> dict:
        return {"score": logits[:, 0]}

    def evaluate_file(self, predictor, data_file: str, out_dir: Path, **columns) -> dict:
        examples = self.read_labelled(data_file, **columns)
        outputs = predictor.logits(examples.texts, examples.pairs, columns.get("batch_size") or 64)
        return write_regression_report(out_dir, examples, np.asarray(outputs).reshape(-1),
                                       float_targets(examples), data_file)


def write_regression_report(out_dir: Path, examples: Examples, predicted: np.ndarray,
                            targets: np.ndarray, title: str) -> dict:
    """``predictions.csv`` and ``metrics.json`` under ``out_dir``; prints and returns the metrics."""
    predicted = predicted.reshape(-1)
    metrics = regression_metrics(predicted, targets)
    frame = pd.DataFrame({"text": examples.texts})
    if examples.pairs is not None:
        frame["text_pair"] = examples.pairs
    frame["target"], frame["predicted"] = targets, predicted.round(6)
    out_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(out_dir / "predictions.csv", frame.to_csv(index=False))
    io.write_json(out_dir / "metrics.json", metrics)
    print(f"\n{title}: pearson={metrics['pearson']:.4f} spearman={metrics['spearman']:.4f} "
          f"mse={metrics['mse']:.4f} mae={metrics['mae']:.4f} ({metrics['examples']} examples)")
    return metrics
