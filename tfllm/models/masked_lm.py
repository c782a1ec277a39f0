"""MaskedLanguageModel: a Keras model around Hugging Face's ``TFBertForMaskedLM`` (or
``TFBertForPreTraining`` when next-sentence prediction is on), trained by the shared Trainer.

    >>> model, report = build_masked_lm(ModelConfig(), tokenizer)            # continue MiniLM
    >>> model, report = build_masked_lm(ModelConfig(checkpoint="scratch", preset="tiny"), tokenizer)

**What one training step optimises.** The "example" of masked-LM training is a masked token.
Every chosen position (label != -100) of a global batch gets sample weight
``1 / (chosen positions in the global batch)``: the model's ``train_step`` counts them on each
replica, all-reduces the count, then hands the per-position weights to the shared
:meth:`TaskModel.train_step`. Summing ``loss x weight`` over replicas and micro-batches (gradient
accumulation) therefore gives exactly the mean loss per masked token of the global batch, for any
number of replicas or accumulation steps. With NSP the objective adds the mean NSP loss per
sequence (weight ``1 / sequences in the global batch``), carried in one extra column of the
labels, losses and weights.

**Cheap head.** Only chosen positions go through the output projection (``hidden x vocab``),
about 15% of the tokens instead of all of them; for MiniLM that halves the step's FLOPs.

**Metrics** (train and held-out): ``loss`` (the objective), ``perplexity`` (``exp`` of the mean
masked-token loss), ``accuracy`` (masked-token accuracy); with NSP also ``mlm_loss``,
``nsp_loss`` and ``nsp_accuracy``.

**Checkpoints without an MLM head** (the packaged MiniLM is a bare encoder): the head's transform
(dense + LayerNorm) and output bias start fresh, and the output projection is tied to the input
word embeddings, as in BERT. The encoder's pooler is kept (not trained without NSP), so a
classifier started from the run gets every encoder weight back.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import tensorflow as tf
import tf_keras
from transformers import BertConfig, TFBertForMaskedLM, TFBertForPreTraining
from transformers.models.bert.modeling_tf_bert import TFBertMainLayer, TFBertMLMHead, TFBertPreTrainedModel

from tfllm.config import ModelConfig
from tfllm.data.masking import IGNORE
from tfllm.errors import TfllmError
from tfllm.models.base import TaskModel
from tfllm.models.checkpoints import LoadReport, load_pretrained, prepared
from tfllm.models.freezing import apply_freezing

log = logging.getLogger("tfllm")

# Google's BERT miniatures (Turc et al. 2019) and BERT-base: (layers, hidden, heads).
PRESETS = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
           "base": (12, 768, 12)}
SCRATCH = "scratch"


# --- metrics ----------------------------------------------------------------------------------
class ObjectiveMean(tf_keras.metrics.Metric):
    """``loss``: mean masked-token loss, plus mean NSP loss per sequence when NSP is on.

    The shared step calls ``update_state`` with per-position losses, where unchosen positions
    hold zeros that a plain mean would count; that call is ignored, and
    :meth:`MaskedLanguageModel.update_task_metrics` feeds :meth:`update_parts` instead.
    """

    def __init__(self, name: str = "loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.parts = [self.add_weight(n, initializer="zeros", dtype=tf.float32)
                      for n in ("mlm_total", "mlm_count", "nsp_total", "nsp_count")]

    def update_state(self, values, sample_weight=None):
        return tf.no_op()

    def update_parts(self, mlm_losses, nsp_losses=None):
        updates = [self.parts[0].assign_add(tf.reduce_sum(mlm_losses)),
                   self.parts[1].assign_add(tf.cast(tf.size(mlm_losses), tf.float32))]
        if nsp_losses is not None:
            updates += [self.parts[2].assign_add(tf.reduce_sum(nsp_losses)),
                        self.parts[3].assign_add(tf.cast(tf.size(nsp_losses), tf.float32))]
        return tf.group(updates)

    def result(self):
        mlm_total, mlm_count, nsp_total, nsp_count = self.parts
        return tf.math.divide_no_nan(mlm_total, mlm_count) + tf.math.divide_no_nan(nsp_total, nsp_count)

    def reset_state(self):
        for v in self.parts:
            v.assign(0.0)


class Perplexity(tf_keras.metrics.Mean):
    """``exp`` of the mean of the masked-token losses it was given."""

    def result(self):
        return tf.exp(super().result())


# --- the model --------------------------------------------------------------------------------
class MaskedLanguageModel(TaskModel):
    """``call`` returns ``{"logits": [batch, length, vocab]}`` (+ ``"nsp_logits"``), float32."""

    def __init__(self, bert, nsp: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert
        self.nsp = bool(nsp)
        self.loss_tracker = ObjectiveMean(name="loss")
        self.perplexity = Perplexity(name="perplexity")
        self.accuracy = tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if self.nsp:
            self.mlm_loss = tf_keras.metrics.Mean(name="mlm_loss")
            self.nsp_loss = tf_keras.metrics.Mean(name="nsp_loss")
            self.nsp_accuracy = tf_keras.metrics.SparseCategoricalAccuracy(name="nsp_accuracy")

    def task_metrics(self):
        extra = [self.mlm_loss, self.nsp_loss, self.nsp_accuracy] if self.nsp else []
        return [self.perplexity, self.accuracy] + extra

    def _encode(self, inputs, training):
        return self.bert.bert(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                              token_type_ids=inputs.get("token_type_ids"), training=training)

    def call(self, inputs, training=False):
        out = self._encode(inputs, training)
        result = {"logits": tf.cast(self.bert.mlm(out.last_hidden_state, training=training), tf.float32)}
        if self.nsp:
            result["nsp_logits"] = tf.cast(self.bert.nsp(out.pooler_output), tf.float32)
        return result

    def split_labels(self, y):
        y = tf.cast(y, tf.int32)
        return (y[:, :-1], y[:, -1]) if self.nsp else (y, None)

    def per_example_loss(self, x, y, training):
        """Per-position losses ``[batch, length]`` (zero where nothing was chosen; + NSP column)."""
        labels, nsp_labels = self.split_labels(y)
        out = self._encode(x, training)
        positions = tf.where(labels != IGNORE)                     # [chosen, 2]
        hidden = tf.gather_nd(out.last_hidden_state, positions)    # [chosen, hidden]
        logits = tf.cast(self.bert.mlm(hidden[None], training=training)[0], tf.float32)
        targets = tf.gather_nd(labels, positions)
        token_loss = tf_keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        per_position = tf.scatter_nd(positions, token_loss, tf.shape(labels, out_type=tf.int64))
        outputs = {"token_loss": token_loss, "logits": logits, "targets": targets}
        if self.nsp:
            nsp_logits = tf.cast(self.bert.nsp(out.pooler_output), tf.float32)
            nsp_loss = tf_keras.losses.sparse_categorical_crossentropy(nsp_labels, nsp_logits,
                                                                       from_logits=True)
            per_position = tf.concat([per_position, nsp_loss[:, None]], axis=1)
            outputs.update(nsp_logits=nsp_logits, nsp_loss=nsp_loss, nsp_labels=nsp_labels)
        return per_position, outputs

    def update_task_metrics(self, y, outputs, sample_weight):
        self.loss_tracker.update_parts(outputs["token_loss"], outputs.get("nsp_loss"))
        self.perplexity.update_state(outputs["token_loss"])
        self.accuracy.update_state(outputs["targets"], outputs["logits"])
        if self.nsp:
            self.mlm_loss.update_state(outputs["token_loss"])
            self.nsp_loss.update_state(outputs["nsp_loss"])
            self.nsp_accuracy.update_state(outputs["nsp_labels"], outputs["nsp_logits"])

    def objective_weights(self, y, sequence_weights):
        """Per-position weights: ``1 / chosen positions in the global batch`` (+ NSP column)."""
        labels, _ = self.split_labels(y)
        chosen = tf.cast(labels != IGNORE, tf.float32)
        count = tf.reduce_sum(chosen)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        weights = chosen / tf.maximum(count, 1.0)
        if self.nsp:
            weights = tf.concat([weights, tf.cast(sequence_weights, tf.float32)[:, None]], axis=1)
        return weights

    def train_step(self, data):
        x, y, w = self._unpack(data)  # w: 1 / sequences in the global batch
        return super().train_step((x, y, self.objective_weights(y, w)))

    def save_pretrained(self, directory: str) -> None:
        self.bert.save_pretrained(directory)
        config_file = Path(directory) / "config.json"
        config = json.loads(config_file.read_text())
        config["architectures"] = ["BertForPreTraining" if self.nsp else "BertForMaskedLM"]
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


_CLASSES: dict = {}


def masked_lm_class():
    """``TFBertForMaskedLM`` keeping the encoder's pooler (Hugging Face's drops it), so that the
    pooler of the starting checkpoint survives into the saved model and a later classifier."""
    if "mlm" not in _CLASSES:
        class TFBertForMaskedLMWithPooler(TFBertForMaskedLM):
            _keys_to_ignore_on_load_unexpected = [r"cls.seq_relationship", r"cls.predictions.decoder.weight",
                                                  r"nsp___cls", r"position_ids"]

            def __init__(self, config, *inputs, **kwargs):
                TFBertPreTrainedModel.__init__(self, config, *inputs, **kwargs)
                self.bert = TFBertMainLayer(config, add_pooling_layer=True, name="bert")
                self.mlm = TFBertMLMHead(config, input_embeddings=self.bert.embeddings, name="mlm___cls")

        _CLASSES["mlm"] = TFBertForMaskedLMWithPooler
    return _CLASSES["mlm"]


def scratch_config(cfg: ModelConfig, vocab_size: int, pad_token_id: int = 0):
    """A ``BertConfig`` from ``model.preset`` and the explicit sizes (which win)."""
    layers, hidden, heads = PRESETS[cfg.preset] if cfg.preset else (None, None, None)
    layers = cfg.num_layers or layers
    hidden = cfg.hidden_size or hidden
    heads = cfg.num_heads or heads
    missing = [k for k, v in (("num_layers", layers), ("hidden_size", hidden), ("num_heads", heads)) if not v]
    if missing:
        raise TfllmError(f"model.checkpoint=scratch needs model.preset ({', '.join(PRESETS)}) or "
                         f"model.{', model.'.join(missing)}")
    for key, value in (("num_layers", layers), ("hidden_size", hidden), ("num_heads", heads),
                       ("intermediate_size", cfg.intermediate_size or 1)):
        if value < 1:
            raise TfllmError(f"config key model.{key}: must be at least 1, got {value}")
    if hidden % heads:
        raise TfllmError(f"config key model.hidden_size: {hidden} is not divisible by "
                         f"model.num_heads={heads}")
    overrides = {k: v for k, v in (("hidden_dropout_prob", cfg.hidden_dropout),
                                   ("attention_probs_dropout_prob", cfg.attention_dropout)) if v is not None}
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=cfg.intermediate_size or 4 * hidden,
                      max_position_embeddings=512, pad_token_id=pad_token_id, **overrides)


def describe_size(config) -> str:
    return (f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, "
            f"vocabulary {config.vocab_size}")


def build_masked_lm(cfg: ModelConfig, tokenizer, nsp: bool = False, grad_accum_steps: int = 1,
                    max_grad_norm: Optional[float] = None) -> tuple[MaskedLanguageModel, LoadReport]:
    """The checkpoint (or a random BERT sized by the config) with MLM (+ NSP) heads, wrapped."""
    model_cls = TFBertForPreTraining if nsp else masked_lm_class()
    if cfg.checkpoint == SCRATCH:
        config = scratch_config(cfg, len(tokenizer), tokenizer.pad_token_id or 0)
        bert = prepared(model_cls(config))
        bert(bert.dummy_inputs, training=False)
        report = LoadReport("scratch (random initialisation)")
        log.info("random initialisation: %s, %.2fM parameters", describe_size(config),
                 bert.count_params() / 1e6)
    else:
        bert, report = load_pretrained(model_cls, cfg.checkpoint, hidden_dropout_prob=cfg.hidden_dropout,
                                       attention_probs_dropout_prob=cfg.attention_dropout)
        if bert.config.vocab_size < len(tokenizer):
            raise TfllmError(f"checkpoint {cfg.checkpoint}: its vocabulary ({bert.config.vocab_size}) is "
                             f"smaller than the tokenizer's ({len(tokenizer)})")
        head = [k for k in report.missing if "predictions" in k or "mlm" in k]
        if head:
            log.info("%s has no masked-LM head weights: the head's transform (dense + LayerNorm) and "
                     "output bias start fresh; the output projection is tied to the input word "
                     "embeddings", cfg.checkpoint)
    if not nsp:
        bert.bert.pooler.trainable = False  # no gradient without NSP: keep it as loaded
    apply_freezing(bert.bert, cfg.freeze_embeddings, cfg.freeze_layers)
    model = MaskedLanguageModel(bert, nsp=nsp, grad_accum_steps=grad_accum_steps,
                                max_grad_norm=max_grad_norm)
    return model, report


__all__ = ["MaskedLanguageModel", "PRESETS", "build_masked_lm", "scratch_config"]
