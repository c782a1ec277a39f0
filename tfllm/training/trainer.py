"""The Trainer every task shares: one loop for fine-tuning and pre-training.

It drives a :class:`~tfllm.models.base.TaskModel` under any ``tf.distribute`` strategy with
Keras' own ``make_train_function`` / ``make_test_function``, and adds what long runs need:
periodic dev evaluation, early stopping with best-weights restore, ``tf.train.CheckpointManager``
checkpoints with exact resume (same batches in the same order, the same dropout draws), a guard
that stops on a NaN/Inf loss keeping the last checkpoint before the divergence, a checkpoint and
a clean exit on Ctrl-C / SIGTERM, and TensorBoard logging.

A checkpoint holds the weights, the optimizer, the dropout RNG state and the :class:`TrainState`
(as a string variable), so what resume reads can never disagree with the weights it restores.
An unreadable checkpoint (truncated, corrupt) is skipped for the previous one, with a warning.

    >>> with strategy.scope():
    ...     model, _ = build_classifier(cfg.model, num_labels=2)
    >>> trainer = Trainer(model, cfg.train, run_dir, strategy)
    >>> result = trainer.fit(train_data, dev_data, resume=False)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from tfllm import io, rundir
from tfllm.config import TrainConfig
from tfllm.data.pipeline import BatchPlan, SplitData, distribute
from tfllm.data.tokenization import Encoded
from tfllm.errors import TfllmError, first_line
from tfllm.faults import kill_point
from tfllm.training.interrupts import StopSignals
from tfllm.training.optimization import make_optimizer
from tfllm.training.reporting import RunReporter, batch_bar

log = logging.getLogger("tfllm")
LOWER_IS_BETTER = ("loss", "perplexity", "mse", "mae", "hamming")


def lower_is_better(metric: str) -> bool:
    """For a metric named by the user: losses and errors fall as the model improves."""
    return any(k in metric for k in LOWER_IS_BETTER)


@dataclass
class TrainState:
    """What resume needs beyond the weights; saved inside each checkpoint (``train_state``)."""
    step: int = 0
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_improvement: int = 0
    history: list = field(default_factory=list)
    stopped_early: bool = False


class Trainer:
    def __init__(self, model, cfg: TrainConfig, run_dir: Path, strategy: tf.distribute.Strategy,
                 monitor: str = "loss", higher_is_better: bool = False, multiple: int = 8,
                 restore_dir: Optional[Path] = None, step_callbacks: Sequence[Callable] = (),
                 final_eval_follows: bool = False):
        self.model, self.cfg, self.run_dir, self.strategy = model, cfg, Path(run_dir), strategy
        # The dev metric that picks the best weights and drives early stopping (the task's
        # default unless train.early_stopping_metric names another).
        self.monitor, self.higher_is_better = monitor, higher_is_better
        # The caller evaluates the final weights itself (classification's final report): the
        # in-loop evaluation at the last step is then skipped unless best-weights restoring or
        # early stopping needs it (on IMDB's 5,000 test reviews that is minutes saved per run).
        self.final_eval_follows = final_eval_follows
        # Called as callback(trainer, step) before every training step, with ``step`` the number
        # of steps already done (e.g. pruning: TF-MOT's UpdatePruningStep semantics).
        self.step_callbacks = list(step_callbacks)
        self.multiple = multiple
        self.ckpt_dir = self.run_dir / rundir.CHECKPOINTS
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
                                       self.cfg.lr_schedule, self.cfg.weight_decay, loss_scale,
                                       fused=self.cfg.fused_optimizer)
            jit = self.cfg.jit_compile and self.strategy.num_replicas_in_sync == 1
            if self.cfg.jit_compile and not jit:
                log.warning("XLA (train.jit_compile) is switched off with several replicas")
            self.model.compile(optimizer=optimizer, jit_compile=jit)
            self.model(sample_batch, training=False)
            optimizer.build(self.model.trainable_variables)
        self.state_text = tf.Variable("{}", dtype=tf.string, trainable=False, name="train_state")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer,
                                              dropout_rng=dropout_generators(self.model),
                                              train_state=self.state_text)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.ckpt_dir),
                                                  max_to_keep=self.cfg.keep_checkpoints,
                                                  checkpoint_name="ckpt")

    # --- the loop -------------------------------------------------------------------------
    def fit(self, train: SplitData, dev: Optional[SplitData], resume: bool = False,
            config_text: str = "") -> TrainState:
        total = self.total_steps(train.plan)
        sample = sample_features(train.encoded)
        self.compile(total, sample)
        state = self._restore(resume)
        if state.step >= total or state.stopped_early:
            log.info("--resume: training had already %s at step %d",
                     "stopped early" if state.stopped_early else "finished", state.step)
            self._restore_best_weights(state)
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
        with StopSignals() as stop, reporter:
            while state.step < total:
                for callback in self.step_callbacks:
                    callback(self, state.step)
                logs = train_function(batches)
                state.step += 1
                self._check_finite(logs, state.step)
                reporter.step(state.step, float(logs["loss"]))
                at_eval = dev is not None and (state.step % eval_every == 0 or state.step == total)
                if state.step == total and skip_last_eval:
                    at_eval = False
                if state.step % self.cfg.log_every == 0 or at_eval or state.step == total:
                    reporter.train(state.step, _numpy(logs), train.plan.batch_size)
                    self.model.reset_metrics()
                if at_eval and self._evaluate_and_track(dev, state, reporter):
                    state.stopped_early = True
                    log.info("early stopping at step %d: no %s improvement in %d evaluations",
                             state.step, self.monitor,
                             self.cfg.early_stopping_patience)
                    break
                if state.step % self.cfg.checkpoint_every == 0 or stop.received:
                    self._save(state)
                if stop.received:
                    raise stop.interrupted(state.step, self.restore_dir.parent)
        self._save(state)
        self._restore_best_weights(state)
        return state

    def _check_finite(self, logs: dict, step: int) -> None:
        """Stop on a NaN/Inf loss, keeping only checkpoints from before the divergence.

        The loss of step ``step`` is computed on the weights after ``step - 1`` updates, so
        checkpoint ``step - 1`` holds weights that already give a non-finite loss: the last good
        checkpoint is the newest one before it whose weights are all finite.
        """
        loss = float(logs["loss"])  # the mean since the last report: finite until a step is not
        if math.isfinite(loss):
            return
        kept = self._rewind(before=step - 1)
        where = f"kept {kept} and restored it" if kept else "no checkpoint had been written before it"
        raise TfllmError(f"training loss became {loss} at step {step}; stopped ({where}). "
                         "Try a lower train.learning_rate or train.max_grad_norm")

    def _rewind(self, before: int) -> Optional[str]:
        """Delete checkpoints from step ``before`` on (and any with non-finite weights); restore
        and return the newest remaining one, which becomes the one ``--resume`` starts from."""
        kept = None
        for path in checkpoint_paths(self.ckpt_dir):  # newest first
            if kept is None and checkpoint_number(path) < before and finite_checkpoint(path):
                kept = path
                continue
            if kept is None:
                for file in self.ckpt_dir.glob(f"{Path(path).name}.*"):
                    file.unlink()
        if kept:
            tf.compat.v1.train.update_checkpoint_state(
                str(self.ckpt_dir), kept, all_model_checkpoint_paths=checkpoint_paths(self.ckpt_dir)[::-1])
            self.checkpoint.restore(kept).expect_partial()
        else:
            (self.ckpt_dir / "checkpoint").unlink(missing_ok=True)
        return kept

    # --- evaluation and early stopping ----------------------------------------------------
    def evaluate(self, dev: SplitData) -> tuple[dict, dict]:
        """Dev metrics from the model's ``test_step`` over one pass, plus the model's images
        (e.g. a confusion matrix) as ``{name: RGBA array}``."""
        replicas = self.strategy.num_replicas_in_sync
        steps = sum(1 for b in dev.plan.epoch(0) if len(b) >= replicas)
        batches = iter(distribute(self.strategy, dev.encoded, dev.plan, epochs=1,
                                  multiple=self.multiple, map_fn=dev.map_fn))
        test_function = self.model.make_test_function()
        self.model.reset_metrics()
        bar = batch_bar(steps)
        for number in range(1, steps + 1):
            test_function(batches)
            if bar is not None:
                bar.update(number)
        metrics = {m.name: float(m.result()) for m in self.model.metrics}
        images = self.model.dev_images()
        self.model.reset_metrics()
        return metrics, images

    def _evaluate_and_track(self, dev: SplitData, state: TrainState, reporter: RunReporter) -> bool:
        """Evaluate, log, keep the best weights; True when early stopping should stop the run."""
        metrics, images = self.evaluate(dev)
        reporter.dev(state.step, metrics, images)
        state.history.append({"step": state.step, **metrics})
        if self.monitor not in metrics:
            raise TfllmError(f"config key train.early_stopping_metric: {self.monitor!r} is not a dev "
                             f"metric (available: {', '.join(metrics)})")
        value = metrics[self.monitor]
        improved = state.best_metric is None or (value > state.best_metric if self.higher_is_better
                                                 else value < state.best_metric)
        if improved:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            if self.cfg.restore_best:
                self._save_best(state.step)
        else:
            state.evals_without_improvement += 1
        patience = self.cfg.early_stopping_patience
        return patience is not None and state.evals_without_improvement >= patience

    # --- checkpoints ------------------------------------------------------------------------
    def _save(self, state: TrainState) -> None:
        """Checkpoint ``state.step`` (weights, optimizer, RNG and ``state`` in one checkpoint)."""
        if self.manager.latest_checkpoint and checkpoint_number(self.manager.latest_checkpoint) == state.step:
            return
        self.state_text.assign(json.dumps(dataclasses.asdict(state)))
        path = self.manager.save(checkpoint_number=state.step)
        io.fsync_files(self.ckpt_dir.glob(f"{Path(path).name}.*"))
        kill_point("checkpoint_saved")
        for old in (self.ckpt_dir / "best").glob("step-*.index"):  # best weights nobody refers to
            if checkpoint_number(str(old)[:-len(".index")]) != state.best_step:
                for file in old.parent.glob(f"{old.stem}.*"):
                    file.unlink()

    def _best_prefix(self, step: int) -> str:
        return str(self.ckpt_dir / "best" / f"step-{step}")

    def _save_best(self, step: int) -> None:
        """Best dev weights under their own step's name: never written over a file in use."""
        tf.train.Checkpoint(model=self.model).write(self._best_prefix(step))

    def _restore_best_weights(self, state: TrainState) -> None:
        if not (self.cfg.restore_best and state.best_step is not None and state.best_step != state.step):
            return
        prefix = Path(self._best_prefix(state.best_step))
        if not prefix.with_name(prefix.name + ".index").is_file():
            prefix = Path(self.restore_dir / "best" / prefix.name)  # a resumed run's own best
        try:
            tf.train.Checkpoint(model=self.model).read(str(prefix)).expect_partial()
        except Exception as e:  # noqa: BLE001 (any unreadable file: keep the last weights, say so)
            log.warning("the best dev weights (step %d) are unreadable (%s); keeping the last "
                        "step's weights", state.best_step, first_line(e))
            return
        log.info("restored the best dev weights (step %d, %s=%.4f)", state.best_step,
                 self.monitor, state.best_metric)

    def _restore(self, resume: bool) -> TrainState:
        """The newest readable checkpoint's weights and state (``resume``), else a fresh state."""
        if not resume:
            return TrainState()
        paths = checkpoint_paths(self.restore_dir)
        if not paths:
            log.info("--resume: no checkpoint in %s, starting from step 0", self.restore_dir)
            return TrainState()
        for path in paths:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (ValueError, AssertionError) as e:
                raise TfllmError(f"--resume: checkpoint {path} does not fit this model "
                                 f"({first_line(e)}); were the run's model settings changed?") from None
            except Exception as e:  # noqa: BLE001 (truncated or corrupt files raise many types)
                log.warning("--resume: checkpoint %s is unreadable (%s); falling back to the "
                            "previous one", path, first_line(e))
                continue
            state = TrainState(**json.loads(self.state_text.numpy().decode("utf-8")))
            state.step = int(self.model.optimizer.iterations.numpy())
            state.history = [h for h in state.history if h["step"] <= state.step]
            log.info("resumed from %s (step %d)", path, state.step)
            return state
        raise TfllmError(f"--resume: none of the {len(paths)} checkpoints in {self.restore_dir} "
                         "is readable; start the run again with --overwrite")


def checkpoint_number(path: str) -> int:
    return int(re.search(r"-(\d+)$", str(path)).group(1))


def checkpoint_paths(folder: Path) -> list[str]:
    """``ckpt-N`` prefixes found on disk, newest first (the ``checkpoint`` index file may be
    stale or damaged; the files themselves are what counts)."""
    found = [str(p)[:-len(".index")] for p in Path(folder).glob("ckpt-*.index")]
    return sorted((p for p in found if re.search(r"-\d+$", p)), key=checkpoint_number, reverse=True)


def finite_checkpoint(path: str) -> bool:
    """True if every floating-point tensor in the checkpoint is finite."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                return False
    except Exception:  # noqa: BLE001 (unreadable is not good)
        return False
    return True


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


def sample_features(encoded: Encoded) -> dict:
    """A one-example batch used to build the model's variables."""
    ids = encoded.input_ids[0][None, :]
    return {"input_ids": tf.constant(ids), "attention_mask": tf.ones_like(ids),
            "token_type_ids": tf.constant(encoded.token_type_ids[0][None, :])}
