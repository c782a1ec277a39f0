"""BertClassifier: a Keras model around Hugging Face's ``TFBertForSequenceClassification``.

    >>> model, report = build_classifier(ModelConfig(), num_labels=2)
    >>> model.compile(optimizer=tf_keras.optimizers.AdamW(3e-5))
    >>> model.fit(train_ds, validation_data=dev_ds)        # (features, labels[, weights]) batches
    >>> probs = tf.nn.softmax(model.predict(test_ds))
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras
from transformers import TFBertForSequenceClassification

from tfllm.config import ModelConfig
from tfllm.errors import TfllmError
from tfllm.models.base import TaskModel
from tfllm.models.checkpoints import LoadReport, load_pretrained
from tfllm.models.freezing import apply_freezing
from tfllm.training.reporting import confusion_image

log = logging.getLogger("tfllm")


class ConfusionMatrix(tf_keras.metrics.Metric):
    """Streaming confusion matrix (rows: true, columns: predicted); ``result()`` is macro-F1."""

    def __init__(self, num_classes: int, name: str = "macro_f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.matrix = self.add_weight("matrix", shape=(num_classes, num_classes),
                                      initializer="zeros", dtype=tf.float32)

    def update_state(self, y_true, y_pred, sample_weight=None):
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        batch = tf.math.confusion_matrix(tf.cast(y_true, tf.int32), predicted,
                                         num_classes=self.num_classes, dtype=tf.float32)
        self.matrix.assign_add(batch)

    def result(self):
        return macro_f1_from_confusion(self.matrix)

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))


def macro_f1_from_confusion(matrix):
    """Mean F1 over classes that occur in truth or predictions (as scikit-learn's macro average)."""
    tp = tf.linalg.diag_part(matrix)
    predicted, actual = tf.reduce_sum(matrix, 0), tf.reduce_sum(matrix, 1)
    f1 = tf.math.divide_no_nan(2 * tp, predicted + actual)
    present = tf.cast((predicted + actual) > 0, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(f1 * present), tf.reduce_sum(present))


class BertClassifier(TaskModel):
    """Sequence classification; ``call`` returns float32 logits ``[batch, num_labels]``."""

    def __init__(self, bert, num_labels: int, class_weights: Optional[np.ndarray] = None, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert
        self.num_labels = num_labels
        # per-class loss factors (train.class_weights); the labels' mean loss is weighted by them
        self.class_weights = None if class_weights is None else tf.constant(class_weights, tf.float32)
        self.accuracy = tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.confusion = ConfusionMatrix(num_labels)
        self.distill_from(None)

    def call(self, inputs, training=False):
        logits = self.bert(inputs, training=training).logits
        return tf.cast(logits, tf.float32)

    def distill_from(self, teacher: Optional["BertClassifier"], temperature: float = 2.0,
                     weight: float = 0.5) -> None:
        """Train against ``teacher``'s softened predictions too (``None``: labels only).

        Training loss per example: ``(1 - weight) * CE(label) + weight * T^2 * KL(teacher_T || self_T)``
        with both softmaxes at temperature ``T`` (Hinton et al., 2015); evaluation loss stays CE.
        The teacher is not tracked: it is neither trained nor saved in checkpoints.
        """
        object.__setattr__(self, "_distillation", (teacher, float(temperature), float(weight)))

    def per_example_loss(self, x, y, training):
        logits = self(x, training=training)
        loss = tf_keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        if training and self.class_weights is not None:
            loss = loss * tf.gather(self.class_weights, tf.cast(y, tf.int32))
        teacher, temperature, weight = self._distillation
        if training and teacher is not None:
            target = tf.nn.softmax(tf.stop_gradient(teacher(x, training=False)) / temperature)
            log_student = tf.nn.log_softmax(logits / temperature)
            kl = tf.reduce_sum(target * (tf.math.log(target + 1e-12) - log_student), axis=-1)
            loss = (1.0 - weight) * loss + weight * temperature ** 2 * kl
        return loss, logits

    def update_task_metrics(self, y, logits, sample_weight):
        self.accuracy.update_state(y, logits)
        self.confusion.update_state(y, logits)

    def task_metrics(self):
        return [self.accuracy, self.confusion]

    def dev_images(self) -> dict:
        config = self.bert.config
        names = [config.id2label[i] for i in range(self.num_labels)]
        return {"confusion_matrix": confusion_image(self.confusion.matrix.numpy(), names)}

    def save_pretrained(self, directory: str) -> None:
        self.bert.save_pretrained(directory)


def build_classifier(cfg: ModelConfig, num_labels: int, label_names: Optional[Sequence[str]] = None,
                     grad_accum_steps: int = 1, max_grad_norm: Optional[float] = None,
                     class_weights: Optional[np.ndarray] = None):
    """Load the checkpoint into a ``TFBertForSequenceClassification`` and wrap it; returns (model, report)."""
    names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
    bert, report = load_pretrained(
        TFBertForSequenceClassification, cfg.checkpoint, num_labels=num_labels,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        hidden_dropout_prob=cfg.hidden_dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        classifier_dropout=cfg.classifier_dropout)
    apply_freezing(bert.bert, cfg.freeze_embeddings, cfg.freeze_layers)
    model = BertClassifier(bert, num_labels, class_weights, grad_accum_steps=grad_accum_steps,
                           max_grad_norm=max_grad_norm)
    return model, report


def load_teacher(spec: str, label_names: Sequence[str], vocab_size: int) -> BertClassifier:
    """A fine-tuned classifier to distil from; it must have the run's labels and vocabulary."""
    key = "compression.distillation.teacher"
    bert, report = load_pretrained(TFBertForSequenceClassification, spec)
    if any(name.startswith("classifier") for name in report.missing):
        raise TfllmError(f"config key {key}: {spec} has no classifier head (distil from a "
                         f"fine-tuned run, e.g. runs/<name>)")
    teacher_labels = [bert.config.id2label[i] for i in range(bert.config.num_labels)]
    if teacher_labels != list(label_names):
        raise TfllmError(f"config key {key}: {spec} predicts labels {teacher_labels[:10]}, "
                         f"this run has {list(label_names)[:10]}")
    if bert.config.vocab_size != vocab_size:
        raise TfllmError(f"config key {key}: {spec} has a vocabulary of {bert.config.vocab_size} "
                         f"tokens, the run's model {vocab_size}; teacher and student must share one")
    bert.trainable = False
    return BertClassifier(bert, bert.config.num_labels)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


__all__ = ["BertClassifier", "ConfusionMatrix", "LoadReport", "build_classifier", "load_teacher"]
