"""Single-label text (or sentence-pair) classification: ``train.task: classification``.

Softmax over the labels with cross-entropy (optionally class-weighted: ``train.class_weights:
balanced`` or ``{label: weight}``), on Hugging Face's ``TFBertForSequenceClassification``.
Monitors dev accuracy; the report is accuracy, macro-F1, scikit-learn's classification report and
a confusion matrix (PNG and TensorBoard image). Supports pruning, QAT and distillation.

    >>> task = ClassificationTask(load_config("configs/sst2_minilm.yaml"))
    >>> data = task.load_data()
    >>> model, report = task.build_model(data)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from tfllm import io, rundir
from tfllm.data.labels import LabelMap
from tfllm.data.readers import Examples
from tfllm.data.splits import LabelledSplits, load_labelled_splits
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.errors import TfllmError
from tfllm.metrics import class_weights
from tfllm.models.checkpoints import resolve_checkpoint
from tfllm.models.classifier import BertClassifier, build_classifier, softmax
from tfllm.tasks.base import Task, TaskData, plan_splits, register
from tfllm.training.reporting import confusion_figure

log = logging.getLogger("tfllm")


@dataclass
class ClassificationData(TaskData):
    splits: LabelledSplits = None

    @property
    def label_map(self) -> LabelMap:
        return self.splits.label_map


def log_split_sizes(train, dev, labels: Sequence[str]) -> None:
    log.info("data: %d train / %d dev examples, %d labels (%s)", len(train), len(dev), len(labels),
             ", ".join(labels[:10]))


def log_lengths(encoded, max_length: int) -> None:
    log.info("tokens per example: train median %d, max %d (max_length %d)",
             int(np.median(encoded.lengths)), int(encoded.lengths.max()), max_length)


@register
class ClassificationTask(Task):
    name = "classification"
    head = "TFBertForSequenceClassification"
    monitor = "accuracy"
    higher_is_better = True
    supports_compression = True

    label_names: Optional[list[str]] = None

    # --- training ----------------------------------------------------------------------------
    def check_config(self) -> None:
        weights = self.cfg.train.class_weights
        if isinstance(weights, str) and weights != "balanced":
            raise TfllmError(f"config key train.class_weights: {weights!r} is not 'balanced' or a "
                             "mapping {label: weight}")

    def load_data(self, resume: bool = False) -> ClassificationData:
        """Read and validate the splits, tokenize them with the checkpoint's tokenizer, plan batches."""
        cfg = self.cfg
        splits = load_labelled_splits(cfg.data, cfg.train.seed)
        tokenizer = load_tokenizer(resolve_checkpoint(cfg.model.checkpoint))
        self.label_names = list(splits.label_map.names)
        log_split_sizes(splits.train, splits.dev, self.label_names)

        def encode(examples: Examples):
            labels = splits.label_map.encode(examples.labels, examples.source)
            return encode_texts(tokenizer, examples.texts, examples.pairs, cfg.data.max_length, labels)

        train, dev = encode(splits.train), encode(splits.dev)
        log_lengths(train, cfg.data.max_length)
        train_split, dev_split = plan_splits(cfg, train, dev)
        return ClassificationData(tokenizer, train_split, dev_split, splits)

    def build_model(self, data: ClassificationData):
        cfg = self.cfg
        weights = class_weights(data.train.encoded.labels, len(self.label_names),
                                cfg.train.class_weights, self.label_names)
        if weights is not None:
            log.info("class weights: %s", ", ".join(f"{n}={w:.3g}" for n, w in zip(self.label_names, weights)))
        return build_classifier(cfg.model, len(self.label_names), self.label_names,
                                cfg.train.grad_accum_steps, cfg.train.max_grad_norm, weights)

    def save_artifacts(self, run_dir: Path, data: ClassificationData) -> None:
        io.write_json(run_dir / rundir.LABEL_MAP, {"labels": self.label_names})

    def write_report(self, run_dir: Path, data: ClassificationData, outputs) -> dict:
        dev = data.splits.dev
        labels = data.label_map.encode(dev.labels, dev.source)
        metrics = write_evaluation(run_dir / rundir.EVAL / "dev", dev, outputs, labels, self.label_names)
        print_metrics(metrics, f"dev ({dev.source})")
        return {k: v for k, v in metrics.items() if k not in ("report", "confusion_matrix")}

    # --- inference ---------------------------------------------------------------------------
    def load_artifacts(self, run_dir: Path) -> None:
        self.label_names = list(LabelMap.load(Path(run_dir) / rundir.LABEL_MAP).names)

    def artifacts(self) -> dict:
        return {"labels": list(self.label_names)}

    def restore_artifacts(self, values: dict) -> None:
        self.label_names = list(values["labels"])

    def wrap_model(self, hf_model) -> BertClassifier:
        return BertClassifier(hf_model, hf_model.config.num_labels)

    def rows(self, texts, pairs, outputs, encoded, tokenizer) -> list[dict]:
        probabilities = softmax(outputs)
        rows = []
        for i, p in enumerate(probabilities):
            row = {"text": texts[i]} if pairs is None else {"text": texts[i], "text_pair": pairs[i]}
            row.update(label=self.label_names[int(p.argmax())],
                       probabilities={n: round(float(q), 6) for n, q in zip(self.label_names, p)})
            rows.append(row)
        return rows

    def serving_outputs(self, logits) -> dict:
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {"probabilities": probabilities,
                "label": tf.gather(tf.constant(self.label_names), tf.argmax(probabilities, axis=-1))}

    def evaluate_file(self, predictor, data_file: str, out_dir: Path, **columns) -> dict:
        examples = self.read_labelled(data_file, **columns)
        labels = LabelMap(tuple(self.label_names)).encode(examples.labels, data_file)
        logits = predictor.logits(examples.texts, examples.pairs, columns.get("batch_size") or 64)
        metrics = write_evaluation(out_dir, examples, logits, labels, self.label_names,
                                   extra={"data": data_file})
        print_metrics(metrics, data_file)
        print(f"wrote {out_dir}/predictions.csv, metrics.json, classification_report.txt, confusion_matrix.png")
        return metrics


# --- metrics and reports ---------------------------------------------------------------------------
def accuracy_and_macro_f1(predicted: np.ndarray, labels: np.ndarray, num_labels: int) -> dict:
    ids = list(range(num_labels))
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=ids, average="macro", zero_division=0))}


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, cross-entropy, the confusion matrix and the text report."""
    predicted = logits.argmax(-1)
    ids = list(range(len(label_names)))
    probabilities = softmax(logits)
    loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1))))
    return {
        "examples": int(len(labels)),
        **accuracy_and_macro_f1(predicted, labels, len(label_names)),
        "loss": loss,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=ids).tolist(),
        "report": classification_report(labels, predicted, labels=ids, target_names=list(label_names),
                                        digits=4, zero_division=0),
    }


def write_evaluation(out_dir: Path, examples, logits: np.ndarray, labels: np.ndarray,
                     label_names: Sequence[str], extra: Optional[dict] = None) -> dict:
    """Write predictions, metrics, the report and the confusion-matrix PNG; return the metrics."""
    metrics = classification_metrics(logits, labels, label_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    probabilities = softmax(logits)
    frame = pd.DataFrame({"text": examples.texts})
    if examples.pairs is not None:
        frame["text_pair"] = examples.pairs
    frame["label"] = [label_names[i] for i in labels]
    frame["predicted"] = [label_names[i] for i in logits.argmax(-1)]
    frame["confidence"] = probabilities.max(-1).round(6)
    for i, name in enumerate(label_names):
        frame[f"p_{name}"] = probabilities[:, i].round(6)
    io.write_text(out_dir / "predictions.csv", frame.to_csv(index=False))
    io.write_text(out_dir / "classification_report.txt", metrics["report"])
    io.write_json(out_dir / "metrics.json", {**{k: v for k, v in metrics.items() if k != "report"},
                                             **(extra or {})})
    tmp = out_dir / ".confusion_matrix.tmp.png"
    confusion_figure(np.asarray(metrics["confusion_matrix"]), label_names).savefig(tmp)
    tmp.replace(out_dir / "confusion_matrix.png")
    return metrics


def print_metrics(metrics: dict, title: str) -> None:
    print(f"\n{title}: accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} "
          f"loss={metrics['loss']:.4f} ({metrics['examples']} examples)")
    print(metrics["report"])
