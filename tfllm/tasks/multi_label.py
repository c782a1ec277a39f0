"""Multi-label classification: several labels per text (``train.task: multi_label``), e.g. GoEmotions.

The label column holds a set per example: ``"joy,love"`` (``data.label_separator``) or a JSON
list; with ``data.label_names_file`` the data holds integer ids into that file's names. The model
is ``TFBertForSequenceClassification`` with one sigmoid output per label and binary cross-entropy
(summed over the labels), its biases starting at the labels' training log-odds. Dev micro / macro-F1 at 0.5 are monitored during training; at the end one
threshold per label is tuned on the dev set (the one maximising that label's F1) and saved with
the run in ``label_map.json``: predictions use them, and the report gives both figures.

    >>> run_dir = run_training(load_config("configs/goemotions_minilm.yaml"))
    >>> Predictor.load(run_dir).predict(["thank you so much, this made my day"])
    [{'text': ..., 'labels': ['gratitude', 'joy'], 'probabilities': {...}}]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras
from transformers import TFBertForSequenceClassification

from tfllm import io, rundir
from tfllm.data.labels import LabelMap
from tfllm.data.multilabel import ids_to_names, label_names_from_sets, multi_hot, names_from_file, parse_label_sets
from tfllm.data.readers import Examples, read_json
from tfllm.data.splits import read_splits
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.errors import TfllmError
from tfllm.metrics import multilabel_metrics, tune_thresholds
from tfllm.models.base import TaskModel
from tfllm.models.checkpoints import load_pretrained, resolve_checkpoint
from tfllm.models.freezing import apply_freezing
from tfllm.tasks.base import Task, TaskData, plan_splits, register
from tfllm.tasks.classification import log_lengths, log_split_sizes

log = logging.getLogger("tfllm")


class LabelF1(tf_keras.metrics.Metric):
    """Micro- or macro-averaged F1 of sigmoid outputs at 0.5, streamed as per-label counts."""

    def __init__(self, num_labels: int, average: str, **kwargs):
        super().__init__(name=f"{average}_f1", **kwargs)
        self.average = average
        self.counts = self.add_weight("counts", shape=(3, num_labels), initializer="zeros")  # tp, fp, fn

    def update_state(self, y_true, logits, sample_weight=None):
        truth, predicted = tf.cast(y_true, tf.float32), tf.cast(logits >= 0.0, tf.float32)
        self.counts.assign_add(tf.stack([tf.reduce_sum(truth * predicted, 0),
                                         tf.reduce_sum((1 - truth) * predicted, 0),
                                         tf.reduce_sum(truth * (1 - predicted), 0)]))

    def result(self):
        tp, fp, fn = tf.unstack(self.counts)
        if self.average == "micro":
            tp, fp, fn = tf.reduce_sum(tp), tf.reduce_sum(fp), tf.reduce_sum(fn)
        f1 = tf.math.divide_no_nan(2 * tp, 2 * tp + fp + fn)
        return tf.reduce_mean(f1)

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))


class BertMultiLabel(TaskModel):
    """``call`` returns float32 logits ``[batch, labels]``; the loss is the sigmoid cross-entropy
    summed over the labels."""

    def __init__(self, bert, num_labels: int, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert
        self.micro_f1 = LabelF1(num_labels, "micro")
        self.macro_f1 = LabelF1(num_labels, "macro")

    def call(self, inputs, training=False):
        return tf.cast(self.bert(inputs, training=training).logits, tf.float32)

    def per_example_loss(self, x, y, training):
        logits = self(x, training=training)
        losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(y, tf.float32), logits=logits)
        # The sum over labels: the example's negative log-likelihood. A mean would divide every
        # gradient by the label count (28), to the size of Adam's epsilon (1e-6) for many encoder
        # weights, which then learn several times slower (GoEmotions: macro-F1 0.35 vs ...).
        return tf.reduce_sum(losses, axis=-1), logits

    def update_task_metrics(self, y, logits, sample_weight):
        self.micro_f1.update_state(y, logits)
        self.macro_f1.update_state(y, logits)

    def task_metrics(self):
        return [self.micro_f1, self.macro_f1]

    def save_pretrained(self, directory: str) -> None:
        self.bert.save_pretrained(directory)


@dataclass
class MultiLabelData(TaskData):
    dev_examples: Examples = None


def start_at_label_priors(bert, targets: np.ndarray) -> None:
    """Set a new head's biases to the training labels' log-odds, so it starts predicting each
    label's base rate (GoEmotions: 4% positives on average) instead of 0.5: the first steps then
    learn features, not to say "no" to every label (the prior initialisation of Lin et al. 2017)."""
    prior = np.clip(np.asarray(targets, np.float64).mean(axis=0), 1e-4, 1 - 1e-4)
    bert.classifier.bias.assign(np.log(prior / (1 - prior)).astype(np.float32))
    log.info("multi-label head biases start at the training label log-odds (%.2f to %.2f)",
             np.log(prior / (1 - prior)).min(), np.log(prior / (1 - prior)).max())


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


@register
class MultiLabelTask(Task):
    name = "multi_label"
    head = "TFBertForSequenceClassification"
    monitor = "macro_f1"
    higher_is_better = True

    label_names: Optional[list[str]] = None
    thresholds: Optional[np.ndarray] = None

    def label_sets(self, examples: Examples) -> list[list[str]]:
        """The label column as label-name sets (ids mapped through ``data.label_names_file``)."""
        d = self.cfg.data
        sets = parse_label_sets(examples.labels, examples.source, d.label_separator, d.label_column)
        if d.label_names_file:
            sets = ids_to_names(sets, names_from_file(d.label_names_file), examples.source)
        return sets

    def targets(self, examples: Examples) -> np.ndarray:
        return multi_hot(self.label_sets(examples), self.label_names, examples.source)

    def load_data(self, resume: bool = False) -> MultiLabelData:
        cfg = self.cfg
        train, dev = read_splits(cfg.data, cfg.train.seed)
        given = names_from_file(cfg.data.label_names_file) if cfg.data.label_names_file else cfg.data.label_names
        self.label_names = label_names_from_sets(self.label_sets(train), given)
        targets = self.targets(train), self.targets(dev)
        log_split_sizes(train, dev, self.label_names)
        log.info("labels per example: train mean %.2f; rarest label %s (%d train examples)",
                 targets[0].sum(1).mean(), self.label_names[int(targets[0].sum(0).argmin())],
                 int(targets[0].sum(0).min()))
        tokenizer = load_tokenizer(resolve_checkpoint(cfg.model.checkpoint))
        encoded = [encode_texts(tokenizer, e.texts, e.pairs, cfg.data.max_length, t)
                   for e, t in zip((train, dev), targets)]
        log_lengths(encoded[0], cfg.data.max_length)
        return MultiLabelData(tokenizer, *plan_splits(cfg, *encoded), dev)

    def build_model(self, data: MultiLabelData):
        cfg = self.cfg
        names = self.label_names
        bert, report = load_pretrained(
            TFBertForSequenceClassification, cfg.model.checkpoint, num_labels=len(names),
            problem_type="multi_label_classification", id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, hidden_dropout_prob=cfg.model.hidden_dropout,
            attention_probs_dropout_prob=cfg.model.attention_dropout,
            classifier_dropout=cfg.model.classifier_dropout)
        apply_freezing(bert.bert, cfg.model.freeze_embeddings, cfg.model.freeze_layers)
        if any(name.startswith("classifier") for name in report.missing):  # a new head
            start_at_label_priors(bert, data.train.encoded.labels)
        return BertMultiLabel(bert, len(names), grad_accum_steps=cfg.train.grad_accum_steps,
                              max_grad_norm=cfg.train.max_grad_norm), report

    def save_artifacts(self, run_dir: Path, data: MultiLabelData) -> None:
        self.save_label_map(run_dir)

    def save_label_map(self, run_dir: Path) -> None:
        thresholds = None if self.thresholds is None else [round(float(t), 4) for t in self.thresholds]
        io.write_json(run_dir / rundir.LABEL_MAP, {"labels": self.label_names, "thresholds": thresholds})

    def write_report(self, run_dir: Path, data: MultiLabelData, outputs) -> dict:
        probabilities, targets = sigmoid(outputs), data.dev.encoded.labels
        at_half = multilabel_metrics(probabilities, targets, self.label_names)
        self.thresholds = tune_thresholds(probabilities, targets)
        self.save_label_map(run_dir)  # predictions from now on use the tuned thresholds
        metrics = write_multilabel_report(run_dir / rundir.EVAL / "dev", data.dev_examples, probabilities,
                                          targets, self.label_names, self.thresholds,
                                          f"dev ({data.dev_examples.source}), thresholds tuned on it")
        print(f"at threshold 0.5: micro_f1={at_half['micro_f1']:.4f} macro_f1={at_half['macro_f1']:.4f}")
        return {**summary(metrics), "micro_f1_at_0.5": at_half["micro_f1"], "macro_f1_at_0.5": at_half["macro_f1"]}

    # --- inference ---------------------------------------------------------------------------
    def load_artifacts(self, run_dir: Path) -> None:
        path = Path(run_dir) / rundir.LABEL_MAP
        self.label_names = list(LabelMap.load(path).names)
        self.restore_artifacts(read_json(path), path)

    def artifacts(self) -> dict:
        return {"labels": self.label_names, "thresholds": [float(t) for t in self.thresholds]}

    def restore_artifacts(self, values: dict, source: object = "metadata") -> None:
        self.label_names = list(values["labels"])
        thresholds = values.get("thresholds")
        if thresholds is None:
            self.thresholds = np.full(len(self.label_names), 0.5)
            return
        if not (isinstance(thresholds, list) and len(thresholds) == len(self.label_names)
                and all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds)):
            raise TfllmError(f"{source}: thresholds must be one number in [0, 1] per label")
        self.thresholds = np.asarray(thresholds, np.float64)

    def wrap_model(self, hf_model) -> BertMultiLabel:
        return BertMultiLabel(hf_model, hf_model.config.num_labels)

    def rows(self, texts, pairs, outputs, encoded, tokenizer) -> list[dict]:
        rows = []
        for i, p in enumerate(sigmoid(outputs)):
            row = {"text": texts[i]} if pairs is None else {"text": texts[i], "text_pair": pairs[i]}
            chosen = [n for n, q, t in zip(self.label_names, p, self.thresholds) if q >= t]
            row.update(labels=chosen, probabilities={n: round(float(q), 6) for n, q in zip(self.label_names, p)})
            rows.append(row)
        return rows

    def serving_outputs(self, logits) -> dict:
        probabilities = tf.sigmoid(logits)
        return {"probabilities": probabilities,
                "predicted": tf.cast(probabilities >= tf.constant(self.thresholds, tf.float32), tf.int32)}

    def evaluate_file(self, predictor, data_file: str, out_dir: Path, **columns) -> dict:
        examples = self.read_labelled(data_file, **columns)
        probabilities = sigmoid(predictor.logits(examples.texts, examples.pairs, columns.get("batch_size") or 64))
        return summary(write_multilabel_report(out_dir, examples, probabilities, self.targets(examples),
                                               self.label_names, self.thresholds, data_file))


def summary(metrics: dict) -> dict:
    """The scalar metrics (no report text, no per-label table)."""
    return {k: v for k, v in metrics.items() if k not in ("report", "per_label")}


def write_multilabel_report(out_dir: Path, examples: Examples, probabilities: np.ndarray, targets: np.ndarray,
                            names, thresholds: np.ndarray, title: str) -> dict:
    """``predictions.csv``, ``metrics.json`` (with the per-label table) and
    ``classification_report.txt`` under ``out_dir``; prints the summary and the report."""
    metrics = multilabel_metrics(probabilities, targets, names, thresholds)
    frame = pd.DataFrame({"text": examples.texts})
    frame["labels"] = [",".join(n for n, t in zip(names, row) if t) for row in targets]
    frame["predicted"] = [",".join(n for n, q, t in zip(names, row, thresholds) if q >= t) for row in probabilities]
    out_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(out_dir / "predictions.csv", frame.to_csv(index=False))
    io.write_text(out_dir / "classification_report.txt", metrics["report"])
    io.write_json(out_dir / "metrics.json", {k: v for k, v in metrics.items() if k != "report"})
    print(f"\n{title}: micro_f1={metrics['micro_f1']:.4f} macro_f1={metrics['macro_f1']:.4f} "
          f"subset_accuracy={metrics['subset_accuracy']:.4f} ({metrics['examples']} examples)")
    print(metrics["report"])
    return metrics
