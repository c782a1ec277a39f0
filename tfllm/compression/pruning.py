"""Magnitude pruning of a Hugging Face TF BERT with TF-MOT, as a phase of the usual training loop.

TF-MOT's ``prune_low_magnitude`` only accepts built-in Keras layers or layers that say which
weights to prune, and its ``UpdatePruningStep`` callback only finds wrappers among a model's
direct layers (model-optimization#965, #155). So:

* :class:`PrunableBert` is a ``tf_keras`` layer (a ``tfmot.sparsity.keras.PrunableLayer``) around
  the HF model whose ``get_prunable_weights()`` returns the chosen encoder kernels (attention
  Q/K/V/output, feed-forward in/out, optionally the word embeddings);
* ``prune_low_magnitude(PrunableBert(...), pruning_schedule=PolynomialDecay | ConstantSparsity)``
  adds a mask and a threshold per kernel; :class:`PruningClassifier` (a ``BertClassifier``)
  calls the wrapper instead of the bare HF model, so the shared ``train_step`` trains it;
* :class:`PruningHook` is a Trainer step callback doing what ``UpdatePruningStep`` does in
  ``fit`` (the wrapper's ``pruning_step`` follows the optimizer step, also across ``--resume``)
  and logs per-kernel sparsity to TensorBoard (``tensorboard/pruning``);
* :func:`strip` applies the masks a last time and returns the plain ``BertClassifier`` (what
  ``strip_pruning`` does for Sequential/Functional models), so ``model/`` is an ordinary
  transformers checkpoint whose pruned kernels contain zeros.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras
import tensorflow_model_optimization as tfmot

from tfllm import rundir
from tfllm.config import PruningConfig
from tfllm.errors import TfllmError
from tfllm.models.classifier import BertClassifier

log = logging.getLogger("tfllm")

GROUPS = ("attention", "feed_forward", "embeddings")


def encoder_kernels(hf_model, groups) -> list:
    """The Dense kernels (and word embeddings) of the chosen groups, encoder order."""
    groups = set(groups)
    unknown = groups - set(GROUPS)
    if unknown:
        raise TfllmError(f"config key compression.pruning.layers: unknown {sorted(unknown)} "
                         f"(known: {', '.join(GROUPS)})")
    main = hf_model.bert if hasattr(hf_model, "bert") else hf_model
    kernels = []
    if "embeddings" in groups:
        kernels.append(main.embeddings.weight)
    for layer in main.encoder.layer:
        if "attention" in groups:
            attention = layer.attention
            kernels += [attention.self_attention.query.kernel, attention.self_attention.key.kernel,
                        attention.self_attention.value.kernel, attention.dense_output.dense.kernel]
        if "feed_forward" in groups:
            kernels += [layer.intermediate.dense.kernel, layer.bert_output.dense.kernel]
    return kernels


def short_name(variable) -> str:
    """``.../bert/encoder/layer_._0/attention/self/query/kernel:0`` -> ``layer_0/attention/self/query``."""
    name = variable.name.split(":")[0]
    name = name.split("bert/", 1)[-1].replace("encoder/", "").replace("layer_._", "layer_")
    return name[:-len("/kernel")] if name.endswith("/kernel") else name


def sparsity(values: np.ndarray) -> float:
    values = np.asarray(values)
    return float(np.mean(values == 0)) if values.size else 0.0


def kernel_sparsity(hf_model, groups=("attention", "feed_forward")) -> dict:
    """``{short kernel name: fraction of exact zeros}`` of a (stripped) model's kernels."""
    return {short_name(v): sparsity(v.numpy()) for v in encoder_kernels(hf_model, groups)}


class PrunableBert(tf_keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
    """The HF model as one prunable layer: ``call`` returns logits, kernels come from ``groups``."""

    def __init__(self, bert, groups, **kwargs):
        super().__init__(name="prunable_bert", **kwargs)
        self.bert = bert
        self.groups = list(groups)

    def call(self, inputs, training=False):
        return self.bert(inputs, training=training).logits

    def get_prunable_weights(self):
        return encoder_kernels(self.bert, self.groups)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


class PruningClassifier(BertClassifier):
    """A ``BertClassifier`` whose forward pass goes through TF-MOT's ``PruneLowMagnitude`` wrapper."""

    def __init__(self, bert, num_labels: int, schedule, groups, **kwargs):
        super().__init__(bert, num_labels, **kwargs)
        self.pruned = tfmot.sparsity.keras.prune_low_magnitude(PrunableBert(bert, groups),
                                                               pruning_schedule=schedule)

    def call(self, inputs, training=False):
        return tf.cast(self.pruned(inputs, training=training), tf.float32)

    @property
    def pruning_vars(self) -> list:
        """``(kernel, mask, threshold)`` per pruned kernel (after the first call)."""
        return list(self.pruned.pruning_vars)

    def build_pruning(self) -> None:
        """Create masks now (eagerly) and track them by position, so checkpoints hold every mask.

        The wrapper names every mask ``mask``; Keras' name-based checkpoint dependencies would
        keep only the last one, so a resumed run would restart with all-ones masks.
        """
        ids = tf.constant([[101, 102]], tf.int32)
        self({"input_ids": ids, "attention_mask": tf.ones_like(ids), "token_type_ids": tf.zeros_like(ids)},
             training=False)
        self.pruning_masks = [m for _, m, _ in self.pruned.pruning_vars]
        self.pruning_thresholds = [t for _, _, t in self.pruned.pruning_vars]

    def apply_masks(self) -> None:
        self.pruned.pruning_obj.weight_mask_op()


def make_schedule(cfg: PruningConfig, total_steps: int):
    """A TF-MOT pruning schedule; the end step lands on a mask update so the target is reached."""
    if not 0.0 <= cfg.target_sparsity < 1.0:
        raise TfllmError(f"config key compression.pruning.target_sparsity: {cfg.target_sparsity} "
                         "must be in [0, 1)")
    if not 0.0 <= cfg.initial_sparsity <= cfg.target_sparsity:
        raise TfllmError(f"config key compression.pruning.initial_sparsity: {cfg.initial_sparsity} "
                         "must be in [0, target_sparsity]")
    if cfg.frequency < 1:
        raise TfllmError(f"config key compression.pruning.frequency: must be at least 1, got {cfg.frequency}")
    if not 0 <= cfg.begin_step < total_steps:
        raise TfllmError(f"config key compression.pruning.begin_step: {cfg.begin_step} is not "
                         f"within the run's {total_steps} training steps")
    if cfg.schedule == "constant":
        first = max(cfg.begin_step, 1)
        end = -1 if cfg.end_step is None else cfg.end_step
        if end != -1 and not first <= end <= total_steps:
            raise TfllmError(f"config key compression.pruning.end_step: {end} must be within "
                             f"{first}..{total_steps}")
        return tfmot.sparsity.keras.ConstantSparsity(cfg.target_sparsity, begin_step=first,
                                                     end_step=end, frequency=cfg.frequency), first
    # Mask updates happen at steps begin + k*frequency (steps count from 1 in the wrapper).
    wanted = cfg.end_step if cfg.end_step is not None else int(0.7 * total_steps)
    updates = max(1, (wanted - cfg.begin_step) // cfg.frequency)
    end = cfg.begin_step + updates * cfg.frequency
    if end > total_steps:
        raise TfllmError(f"config key compression.pruning: the schedule ends at step {end} "
                         f"(begin_step {cfg.begin_step} + k x frequency {cfg.frequency}) but the run "
                         f"has only {total_steps} steps; lower frequency/end_step or train longer")
    if cfg.end_step is not None and end != cfg.end_step:
        log.info("pruning: end_step %d moved to %d (begin_step + a multiple of frequency)",
                 cfg.end_step, end)
    return tfmot.sparsity.keras.PolynomialDecay(cfg.initial_sparsity, cfg.target_sparsity,
                                                begin_step=cfg.begin_step, end_step=end,
                                                frequency=cfg.frequency), end


class PruningHook:
    """Trainer step callback: ``pruning_step`` = steps done (``UpdatePruningStep``), and sparsity logs."""

    def __init__(self, model: PruningClassifier, log_every: int):
        self.model, self.log_every = model, max(1, log_every)
        self.writer = None  # created on the first step, in the trainer's run directory

    def __call__(self, trainer, step: int) -> None:
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(str(Path(trainer.run_dir) / rundir.TENSORBOARD / "pruning"))
        self.model.pruned.pruning_step.assign(step)  # the wrapper adds 1 in its training call
        if step % self.log_every == 0:
            self.log(step)

    def log(self, step: int) -> dict:
        values = {short_name(k): 1.0 - float(tf.reduce_mean(m)) for k, m, _ in self.model.pruning_vars}
        if self.writer is None:
            return values
        with self.writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(f"sparsity/{name}", value, step=step)
            tf.summary.scalar("sparsity/mean", float(np.mean(list(values.values()))), step=step)
        self.writer.flush()
        return values

    def close(self, step: int) -> None:
        self.log(step)
        if self.writer is not None:
            self.writer.close()


def wrap(model: BertClassifier, cfg: PruningConfig, total_steps: int) -> PruningClassifier:
    """The same HF model (same variables) inside a pruning wrapper, masks built.

    Call it inside the strategy's scope: with several replicas TF-MOT's mask update is a
    cross-replica ``merge_call``, which cannot run inside gradient accumulation's loop.
    """
    if model.grad_accum_steps > 1 and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise TfllmError("config key train.grad_accum_steps: pruning with several replicas needs 1 "
                         "(TF-MOT updates the masks across replicas in every forward pass)")
    schedule, end = make_schedule(cfg, total_steps)
    pruned = PruningClassifier(model.bert, model.num_labels, schedule, cfg.layers,
                               class_weights=model.class_weights, grad_accum_steps=model.grad_accum_steps,
                               max_grad_norm=model.max_grad_norm)
    pruned.build_pruning()
    log.info("pruning %d kernels (%s) to %.0f%% sparsity, %s schedule from step %d to %s, every %d steps",
             len(pruned.pruning_vars), ", ".join(cfg.layers), 100 * cfg.target_sparsity, cfg.schedule,
             cfg.begin_step, end if end != -1 else "the end", cfg.frequency)
    return pruned


def strip(model: PruningClassifier) -> BertClassifier:
    """Apply the masks once more and drop the wrapper: a plain ``BertClassifier`` with zeros in it."""
    model.apply_masks()
    return BertClassifier(model.bert, model.num_labels, grad_accum_steps=model.grad_accum_steps,
                          max_grad_norm=model.max_grad_norm)


def summary(hf_model, groups) -> dict:
    """Sparsity report of a stripped model: per kernel and overall (weighted by size)."""
    kernels = encoder_kernels(hf_model, groups)
    zeros = sum(int(np.sum(v.numpy() == 0)) for v in kernels)
    total = sum(int(np.prod(v.shape)) for v in kernels)
    return {"overall": zeros / max(total, 1), "kernels": kernel_sparsity(hf_model, groups),
            "pruned_parameters": total}


__all__ = ["PrunableBert", "PruningClassifier", "PruningHook", "encoder_kernels", "kernel_sparsity",
           "make_schedule", "strip", "summary", "wrap"]
