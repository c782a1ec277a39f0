"""The Trainer every task shares: one loop for fine-tuning and pre-training.

It drives a :class:`~tfllm.models.base.TaskModel` under any ``tf.distribute`` strategy with
Keras' own ``make_train_function`` / ``make_test_function``, and adds what long runs need:
periodic dev evaluation, early stopping with best-weights restore, ``tf.train.CheckpointManager``
checkpoints with exact resume (same batches in the same order), a guard that stops on a NaN/Inf
loss keeping the last good checkpoint, and TensorBoard logging.

    >>> with strategy.scope():
    ...     model, _ = build_classifier(cfg.model, num_labels=2)
    >>> trainer = Trainer(model, cfg.train, run_dir, strategy)
    >>> result = trainer.fit(train_data, dev_data, resume=False)
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from tfllm import io
from tfllm.config import TrainConfig
from tfllm.data.pipeline import BatchPlan, distribute
from tfllm.data.tokenization import Encoded
from tfllm.errors import TfllmError
from tfllm.training.optimization import make_optimizer
from tfllm.training.reporting import RunReporter

log = logging.getLogger("tfllm")
LOWER_IS_BETTER = ("loss", "perplexity")


@dataclass
class SplitData:
    """Encoded examples plus the batch plan that orders them."""
    encoded: Encoded
    plan: BatchPlan
    map_fn: Optional[Callable] = None  # in-graph batch transform (e.g. MLM masking)


@dataclass
class TrainState:
    """What resume needs beyond the weights: saved as ``ckpt-N.state.json`` beside each checkpoint."""
    step: int = 0
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_improvement: int = 0
    history: list = field(default_factory=list)
    stopped_early: bool = False


class Trainer:
    def __init__(self, model, cfg: TrainConfig, run_dir: Path, strategy: tf.distribute.Strategy,
                 label_names: Optional[Sequence[str]] = None, multiple: int = 8,
                 restore_dir: Optional[Path] = None, step_callbacks: Sequence[Callable] = (),
                 final_eval_follows: bool = False):
        self.model, self.cfg, self.run_dir, self.strategy = model, cfg, Path(run_dir), strategy
        # The caller evaluates the final weights itself (classification's final report): the
        # in-loop evaluation at the last step is then skipped unless best-weights restoring or
        # early stopping needs it (on IMDB's 5,000 test reviews that is minutes saved per run).
        self.final_eval_follows = final_eval_follows
        # Called as callback(trainer, step) before every training step, with ``step`` the number
        # of steps already done (e.g. pruning: TF-MOT's UpdatePruningStep semantics).
        self.step_callbacks = list(step_callbacks)
        self.label_names = label_names
        self.multiple = multiple
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.restore_dir = Path(restore_dir) if restore_dir else self.ckpt_dir  # read on --resume

    # --- set-up ---------------------------------------------------------------------------
    def total_steps(self, plan: BatchPlan) -> int:
        if self.cfg.max_steps:
            return int(self.cfg.max_steps)
        return max(1, int(math.ceil(self.cfg.epochs * plan.steps_per_epoch)))

    def compile(self, total_steps: int, sample_batch) -> None:
        """Create the optimizer (in the strategy's scope) and every variable, so restore works."""
        with self.strategy.scope():
            loss_scale = tf_keras.mixed_precision.global_policy().name == "mixed_float16"
            optimizer = make_optimizer(self.cfg.learning_rate, total_steps, self.cfg.warmup_ratio,
                                       self.cfg.lr_schedule, self.cfg.weight_decay, loss_scale)
            jit = self.cfg.jit_compile and self.strategy.num_replicas_in_sync == 1
            if self.cfg.jit_compile and not jit:
                log.warning("XLA (train.jit_compile) is switched off with several replicas")
            self.model.compile(optimizer=optimizer, jit_compile=jit)
            self.model(sample_batch, training=False)
            optimizer.build(self.model.trainable_variables)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer,
                                              dropout_rng=dropout_generators(self.model))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.ckpt_dir),
                                                  max_to_keep=self.cfg.keep_checkpoints,
                                                  checkpoint_name="ckpt")

    # --- the loop -------------------------------------------------------------------------
    def fit(self, train: SplitData, dev: Optional[SplitData], resume: bool = False,
            config_text: str = "") -> TrainState:
        total = self.total_steps(train.plan)
        sample = _sample_features(train.encoded)
        self.compile(total, sample)
        state = self._restore(resume)
        if state.step >= total:
            log.info("run already finished at step %d", state.step)
            return state
        eval_every = self.cfg.eval_every or train.plan.steps_per_epoch
        skip_last_eval = (self.final_eval_follows and not self.cfg.restore_best
                          and self.cfg.early_stopping_patience is None)
        reporter = RunReporter(self.run_dir, total)
        if config_text and state.step == 0:
            reporter.config_text(config_text)
        log.info("training %d steps (%.2f epochs of %d steps), batch %d over %d replica(s)%s",
                 total, total / train.plan.steps_per_epoch, train.plan.steps_per_epoch,
                 train.plan.batch_size, self.strategy.num_replicas_in_sync,
                 f", resuming at step {state.step}" if state.step else "")
        batches = iter(distribute(self.strategy, train.encoded, train.plan, start_step=state.step,
                                  multiple=self.multiple, map_fn=train.map_fn))
        train_function = self.model.make_train_function()
        self.model.reset_metrics()
        try:
            while state.step < total:
                for callback in self.step_callbacks:
                    callback(self, state.step)
                logs = train_function(batches)
                state.step += 1
                self._check_finite(logs, state.step)
                at_eval = dev is not None and (state.step % eval_every == 0 or state.step == total)
                if state.step == total and skip_last_eval:
                    at_eval = False
                if state.step % self.cfg.log_every == 0 or at_eval or state.step == total:
                    reporter.train(state.step, _numpy(logs), train.plan.batch_size)
                    self.model.reset_metrics()
                if at_eval and self._evaluate_and_track(dev, state, reporter):
                    state.stopped_early = True
                    log.info("early stopping at step %d: no %s improvement in %d evaluations",
                             state.step, self.cfg.early_stopping_metric,
                             self.cfg.early_stopping_patience)
                    break
                if state.step % self.cfg.checkpoint_every == 0:
                    self._save(state)
        finally:
            reporter.close()
        self._save(state)
        if self.cfg.restore_best and state.best_step is not None and state.best_step != state.step:
            self._restore_best()
            log.info("restored the best dev weights (step %d, %s=%.4f)", state.best_step,
                     self.cfg.early_stopping_metric, state.best_metric)
        return state

    def _check_finite(self, logs: dict, step: int) -> None:
        loss = float(logs["loss"])
        if math.isfinite(loss):
            return
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).expect_partial()
        kept = f"last good checkpoint {latest} kept" if latest else "no checkpoint had been written"
        raise TfllmError(f"training loss became {loss} at step {step}; stopped ({kept}). "
                         "Try a lower train.learning_rate or train.max_grad_norm")

    # --- evaluation and early stopping ----------------------------------------------------
    def evaluate(self, dev: SplitData) -> tuple[dict, Optional[np.ndarray]]:
        """Dev metrics from the model's ``test_step`` over one pass, plus a confusion matrix if any."""
        replicas = self.strategy.num_replicas_in_sync
        steps = sum(1 for b in dev.plan.epoch(0) if len(b) >= replicas)
        batches = iter(distribute(self.strategy, dev.encoded, dev.plan, epochs=1,
                                  multiple=self.multiple, map_fn=dev.map_fn))
        test_function = self.model.make_test_function()
        self.model.reset_metrics()
        for _ in range(steps):
            test_function(batches)
        metrics = {m.name: float(m.result()) for m in self.model.metrics}
        confusion = getattr(self.model, "confusion", None)
        matrix = confusion.matrix.numpy() if confusion is not None else None
        self.model.reset_metrics()
        return metrics, matrix

    def _evaluate_and_track(self, dev: SplitData, state: TrainState, reporter: RunReporter) -> bool:
        """Evaluate, log, keep the best weights; True when early stopping should stop the run."""
        metrics, matrix = self.evaluate(dev)
        reporter.dev(state.step, metrics, matrix, self.label_names)
        state.history.append({"step": state.step, **metrics})
        name = self.cfg.early_stopping_metric
        if name not in metrics:
            raise TfllmError(f"config key train.early_stopping_metric: {name!r} is not a dev metric "
                             f"(available: {', '.join(metrics)})")
        value = metrics[name]
        lower = any(k in name for k in LOWER_IS_BETTER)
        improved = state.best_metric is None or (value < state.best_metric if lower
                                                 else value > state.best_metric)
        if improved:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            if self.cfg.restore_best:
                self._save_best()
        else:
            state.evals_without_improvement += 1
        patience = self.cfg.early_stopping_patience
        return patience is not None and state.evals_without_improvement >= patience

    # --- checkpoints ------------------------------------------------------------------------
    def _save(self, state: TrainState) -> None:
        if self.manager.latest_checkpoint and self.manager.latest_checkpoint.endswith(f"-{state.step}"):
            return
        path = self.manager.save(checkpoint_number=state.step)
        io.write_json(Path(f"{path}.state.json"), state.__dict__)
        kept = {f"{Path(p).name}.state.json" for p in self.manager.checkpoints}
        for old in self.ckpt_dir.glob("ckpt-*.state.json"):
            if old.name not in kept:
                old.unlink()

    def _best_prefix(self) -> str:
        return str(self.ckpt_dir / "best" / "weights")

    def _save_best(self) -> None:
        tf.train.Checkpoint(model=self.model).write(self._best_prefix())

    def _restore_best(self) -> None:
        tf.train.Checkpoint(model=self.model).read(self._best_prefix()).expect_partial()

    def _restore(self, resume: bool) -> TrainState:
        if not resume:
            return TrainState()
        latest = tf.train.latest_checkpoint(str(self.restore_dir))
        if not latest:
            log.info("--resume: no checkpoint in %s, starting from step 0", self.restore_dir)
            return TrainState()
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        state_file = Path(f"{latest}.state.json")
        state = TrainState(**json.loads(state_file.read_text())) if state_file.is_file() else TrainState()
        state.step = int(self.model.optimizer.iterations.numpy())
        state.history = [h for h in state.history if h["step"] <= state.step]
        log.info("resumed from %s (step %d)", latest, state.step)
        return state


def dropout_generators(model) -> list:
    """The ``tf.random.Generator`` of every random layer (dropout), in a stable order.

    Keras keeps them out of checkpoints; saving them makes a resumed run draw exactly the
    dropout masks the interrupted run would have drawn. They exist only when
    ``tf_keras.backend.experimental.enable_tf_random_generator()`` was called before the model
    was built (``tfllm.train`` does).
    """
    generators = []
    for layer in model.submodules:
        rng = getattr(layer, "_random_generator", None)
        if rng is not None and hasattr(rng, "_maybe_init"):
            rng._maybe_init()  # created lazily on first use otherwise
            if getattr(rng, "_generator", None) is not None:
                generators.append(rng._generator)
    return generators


def _numpy(logs: dict) -> dict:
    return {k: float(np.asarray(v)) for k, v in logs.items()}


def _sample_features(encoded: Encoded) -> dict:
    """A one-example batch used to build the model's variables."""
    ids = encoded.input_ids[0][None, :]
    return {"input_ids": tf.constant(ids), "attention_mask": tf.ones_like(ids),
            "token_type_ids": tf.constant(encoded.token_type_ids[0][None, :])}
