"""Compression phases of a training run: magnitude pruning and quantization-aware training (TF-MOT).

Both run inside the usual :class:`~tfllm.training.trainer.Trainer` (same loop, checkpoints,
resume, TensorBoard) and end with a plain ``BertClassifier``, so ``run_dir/model`` stays an
ordinary transformers checkpoint:

    >>> phase = CompressionPhase.start(cfg, model, total_steps)   # wraps layers (or not)
    >>> trainer = Trainer(phase.model, phase.train_config(cfg.train), ..., step_callbacks=phase.step_callbacks)
    >>> trainer.fit(...)
    >>> model = phase.finish(run_dir)       # strips wrappers, writes run_dir/compression.json

Start from a fine-tuned run with ``model.checkpoint=runs/<run>`` (its head is kept), or prune /
quantise while fine-tuning from a pretrained checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Optional

from tfllm import io
from tfllm.models.classifier import load_teacher
from tfllm.errors import TfllmError

# ``pruning`` and ``qat`` (TF-MOT) are imported by the phase that uses them: importing TF-MOT
# takes seconds (it also loads the standalone Keras 3 package), which every run without a
# compression phase, and every CLI start, would otherwise pay.

log = logging.getLogger("tfllm")

COMPRESSION_FILE = "compression.json"


def total_steps(train_cfg, plan) -> int:
    """The run's optimizer steps (as ``Trainer.total_steps``)."""
    if train_cfg.max_steps:
        return int(train_cfg.max_steps)
    return max(1, int(math.ceil(train_cfg.epochs * plan.steps_per_epoch)))


class CompressionPhase:
    """What a run's ``compression`` section adds to training; a no-op when both parts are off."""

    def __init__(self, kind: Optional[str], model, cfg, hooks=()):
        self.kind, self.model, self.cfg, self.step_callbacks = kind, model, cfg, list(hooks)

    @classmethod
    def start(cls, cfg, model, steps: int) -> "CompressionPhase":
        """Wrap ``model`` (a ``BertClassifier``) for the enabled phase; call inside the strategy scope.

        With ``compression.distillation`` on, the wrapped model also learns from the teacher.
        """
        phase = cls._wrap(cfg, model, steps)
        attach_teacher(cfg, phase.model)
        return phase

    @classmethod
    def _wrap(cls, cfg, model, steps: int) -> "CompressionPhase":
        comp = cfg.compression
        if comp.pruning.enabled and comp.qat.enabled:
            raise TfllmError("config keys compression.pruning.enabled and compression.qat.enabled: "
                             "enable one per run (QAT after pruning would regrow the zeros; export "
                             "a pruned run with --quantize int8 instead)")
        if comp.pruning.enabled:
            from tfllm.compression import pruning

            wrapped = pruning.wrap(model, comp.pruning, steps)
            return cls("pruning", wrapped, comp,
                       [pruning.PruningHook(wrapped, cfg.train.log_every)])
        if comp.qat.enabled:
            if cfg.train.mixed_precision not in ("none", "auto"):
                raise TfllmError("config key train.mixed_precision: QAT runs in float32; set it to none")
            from tfllm.compression import qat

            return cls("qat", qat.wrap(model, comp.qat.layers, comp.qat.dropout), comp)
        return cls(None, model, comp)

    def train_config(self, train_cfg):
        """Pruning keeps the final (sparsest) weights: restoring the 'best' dev step would undo it."""
        if self.kind == "pruning" and train_cfg.restore_best:
            log.info("pruning: train.restore_best is off for this run (the best dev step is the "
                     "least sparse one)")
            return dataclasses.replace(train_cfg, restore_best=False)
        return train_cfg

    def finish(self, run_dir: Path, step: Optional[int] = None):
        """Strip the wrappers; returns the plain classifier and writes ``compression.json``."""
        if self.kind is None:
            return self.model
        from tfllm.compression import pruning, qat

        if self.kind == "pruning":
            for hook in self.step_callbacks:
                hook.close(step or 0)
            plain = pruning.strip(self.model)
            report = pruning.summary(plain.bert, self.cfg.pruning.layers)
            log.info("pruning: %.1f%% of %d kernel weights are zero (target %.0f%%)",
                     100 * report["overall"], report["pruned_parameters"],
                     100 * self.cfg.pruning.target_sparsity)
            info = {"pruning": {**dataclasses.asdict(self.cfg.pruning), **report}}
        else:
            plain, learned = qat.strip(self.model)
            info = {"qat": {**dataclasses.asdict(self.cfg.qat), "ranges": learned}}
        if self.cfg.distillation.enabled:
            info["distillation"] = dataclasses.asdict(self.cfg.distillation)
        io.write_json(Path(run_dir) / COMPRESSION_FILE, info)
        return plain


def attach_teacher(cfg, model) -> None:
    """Load ``compression.distillation``'s teacher (default: the checkpoint the run starts from)."""
    distill = cfg.compression.distillation
    if not distill.enabled:
        return
    if not distill.temperature > 0:
        raise TfllmError(f"config key compression.distillation.temperature: must be positive, "
                         f"got {distill.temperature}")
    if not 0.0 < distill.weight <= 1.0:
        raise TfllmError(f"config key compression.distillation.weight: must be in (0, 1], "
                         f"got {distill.weight}")
    config = model.bert.config
    names = [config.id2label[i] for i in range(config.num_labels)]
    spec = distill.teacher or cfg.model.checkpoint
    model.distill_from(load_teacher(spec, names, config.vocab_size), distill.temperature, distill.weight)
    log.info("distillation from %s: loss = %.2f x label cross-entropy + %.2f x T^2 KL at T=%g",
             spec, 1 - distill.weight, distill.weight, distill.temperature)


def read_compression(run_dir: Path) -> dict:
    """The run's ``compression.json`` (empty when the run had no compression phase)."""
    path = Path(run_dir) / COMPRESSION_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TfllmError(f"{path}: not valid JSON ({e})") from None
