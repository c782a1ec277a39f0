"""The run lifecycle every task shares: check, strategy, data, seed, build, run dir, train, save, report.

    >>> run_dir = run(load_config("configs/stsb_minilm.yaml"))        # any registered task

Everything that can fail on bad input (config values, data, checkpoint) is checked before the run
directory is touched, so a failed start never damages an existing run. Multi-worker: every worker
runs every step (they share collectives), but only the chief writes the run directory; the others
write to a scratch directory deleted at the end and resume from the chief's checkpoints (shared
storage, as TF's multi-worker guide assumes).
"""
from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tensorflow as tf
import tf_keras
import transformers
from tensorflow.python.util import _pywrap_util_port

import tfllm
from tfllm import io, rundir
from tfllm.cli import ensure_logging
from tfllm.compression import CompressionPhase, total_steps
from tfllm.config import Config, save_config, with_absolute_paths
from tfllm.data.readers import read_json
from tfllm.errors import TfllmError
from tfllm.hardware import cpu
from tfllm.runs import load_run
from tfllm.tasks import Task, task_for
from tfllm.training.reporting import write_dev_scalars
from tfllm.training.strategy import is_chief, make_strategy, seed_everything
from tfllm.training.trainer import Trainer, lower_is_better

log = logging.getLogger("tfllm")


def run(cfg: Config, overwrite: bool = False, resume: bool = False) -> Path:
    """Train as ``cfg`` says (``train.task`` picks the task); returns the run directory."""
    started = time.time()
    ensure_logging()
    task = task_for(cfg)
    check_values(cfg, task)
    task.check_config()
    if already_finished(cfg, resume):
        return cfg.run_dir
    strategy = make_strategy(cfg.distribute)  # before anything else touches TF devices
    chief = is_chief(strategy)
    if chief:
        rundir.check_claim(cfg.run_dir, overwrite, resume)  # refuse now, not after minutes of work
    data = task.load_data(resume)
    previous_policy = tf_keras.mixed_precision.global_policy()
    try:
        return train_and_save(cfg, task, data, strategy, chief, overwrite, resume, started)
    finally:  # the run's precision must not leak into models built after it in this process
        tf_keras.mixed_precision.set_global_policy(previous_policy)


def train_and_save(cfg: Config, task: Task, data, strategy, chief: bool, overwrite: bool, resume: bool,
                   started: float) -> Path:
    """The run itself, once the config and data are known to be good."""
    precision = seed_everything(cfg)
    log.info("precision: %s (%s)", precision.policy, precision.reason)
    with strategy.scope():
        model, report = task.build_model(data)
        # Pruning / QAT (cfg.compression): TF-MOT wrappers around the same weights, or a no-op.
        compression = CompressionPhase.start(cfg, model, total_steps(cfg.train, data.train.plan))
    log.info(report.summary())

    run_dir = rundir.claim(cfg.run_dir, overwrite, resume) if chief else Path(tempfile.mkdtemp("-tfllm-worker"))
    write_run_metadata(run_dir, cfg, resume, precision, strategy.num_replicas_in_sync)
    task.save_artifacts(run_dir, data)
    monitor, higher = monitored_metric(cfg, task)
    trainer = Trainer(compression.model, compression.train_config(cfg.train), run_dir, strategy,
                      monitor, higher, cfg.padding_multiple,
                      restore_dir=cfg.run_dir / rundir.CHECKPOINTS,
                      step_callbacks=compression.step_callbacks, final_eval_follows=True)
    state = trainer.fit(data.train, data.dev, resume=resume,
                        config_text=(run_dir / rundir.CONFIG).read_text())
    in_float32 = final_eval_in_float32(task, precision.policy)
    outputs = None if in_float32 else task.final_outputs(compression.model, data, trainer)
    model = compression.finish(run_dir, state.step)  # wrappers stripped: a plain BERT is saved
    save_model(run_dir, model, data.tokenizer)
    if in_float32:
        task, outputs = float32_dev_outputs(run_dir, data, precision.policy)
    final = task.write_report(run_dir, data, outputs)
    extras = {**task.summary_extras(data), "dev_precision": "float32" if in_float32 else precision.policy}
    write_summary(run_dir, final, state, time.time() - started, extras)
    print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})")
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        return cfg.run_dir
    return run_dir


def final_eval_in_float32(task: Task, policy: str) -> bool:
    """Whether the final dev report scores the saved weights in float32 rather than as trained.

    After mixed-precision training it does (the task allowing): the saved float32 weights are
    the model (exports compute in float32), ``python -m tfllm.evaluate RUN`` scores them in
    float32, and so the run's ``metrics.json`` agrees with it. A bf16 score also moves with how
    the dev set is batched and padded: the SST-2 bf16 run of benchmarks/finetune.py scored 780 of
    872 in length-sorted batches of 64 and 781 in file-order ones (tfllm.evaluate in float32: 781).
    The evaluations during training stay in the training precision (they are cheaper there)."""
    return policy != "none" and task.final_eval_in_float32


def float32_dev_outputs(run_dir: Path, data, policy: str):
    """The model just saved in ``run_dir``, loaded as ``tfllm.evaluate`` loads it (float32), and
    its dev outputs; returns (its task, with the run's artifacts read back; the outputs)."""
    log.info("final dev evaluation: the saved weights in float32, as python -m tfllm.evaluate "
             "scores them (training computed in %s)", policy)
    run = load_run(run_dir)
    outputs = run.task.outputs_of(run.task.wrap_model(run.hf_model), data.tokenizer, data.dev.encoded)
    return run.task, outputs


def monitored_metric(cfg: Config, task: Task) -> tuple[str, bool]:
    """The dev metric that picks the best weights: ``train.early_stopping_metric`` or the task's."""
    name = cfg.train.early_stopping_metric
    if name is None:
        return task.monitor, task.higher_is_better
    return name, not lower_is_better(name)


def write_summary(run_dir: Path, final: dict, state, seconds: float, extras: dict) -> None:
    """``metrics.json`` (written last: its presence marks the run finished) and the final dev
    scalars in TensorBoard when the Trainer did not evaluate the last step itself."""
    scalars = {k: v for k, v in final.items() if isinstance(v, (int, float))}
    if not state.history or state.history[-1]["step"] != state.step:
        write_dev_scalars(run_dir, state.step, scalars)
        state.history.append({"step": state.step, **scalars})
    io.write_json(run_dir / rundir.METRICS, {
        "dev": final, "steps": state.step, "best_step": state.best_step,
        "stopped_early": state.stopped_early, "train_seconds": round(seconds, 1),
        "history": state.history, **extras})


def already_finished(cfg: Config, resume: bool) -> bool:
    """``--resume`` of a finished run changes nothing: say so (and how to train on) instead."""
    if not (resume and rundir.is_finished(cfg.run_dir)):
        return False
    metrics = read_json(cfg.run_dir / rundir.METRICS)
    how = "stopped early" if metrics.get("stopped_early") else "finished"
    log.info("--resume: %s already %s at step %s (best step %s); nothing changed. To train "
             "further, start a new run from it: model.checkpoint=%s output_dir=<new folder>",
             cfg.run_dir, how, metrics.get("steps"), metrics.get("best_step"), cfg.run_dir)
    return True


def versions() -> dict:
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "tf_keras": tf_keras.__version__, "transformers": transformers.__version__,
            "tfllm": tfllm.__version__, "platform": platform.platform()}


def source_commit() -> str | None:
    """The git commit of tfllm's own checkout (``+dirty`` with local changes), if it is one."""
    root = Path(tfllm.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno", "--", "tfllm"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def write_run_metadata(run_dir: Path, cfg: Config, resume: bool, precision, replicas: int) -> None:
    if not (resume and (run_dir / rundir.CONFIG).exists()):
        save_config(with_absolute_paths(cfg), run_dir / rundir.CONFIG)  # usable from any directory
    io.write_json(run_dir / rundir.RUN_INFO, {"versions": versions(), "seed": cfg.train.seed,
                                              "precision": precision.policy,
                                              "precision_reason": precision.reason, "command": sys.argv,
                                              "replicas": replicas, "task": cfg.train.task, "cpu": cpu(),
                                              "onednn": bool(_pywrap_util_port.IsMklEnabled()),
                                              "code": source_commit()})


def save_model(run_dir: Path, model, tokenizer) -> None:
    """``run_dir/model``: a transformers checkpoint with its tokenizer, replaced atomically."""
    with io.atomic_directory(run_dir / rundir.MODEL) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def check_values(cfg: Config, task: Task) -> None:
    """Range checks the type system cannot express (every task)."""
    if not cfg.output_dir:
        rundir.check_run_name(cfg.name)
    for section in ("data", "model", "train"):
        for key, value in vars(getattr(cfg, section)).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise TfllmError(f"config key {section}.{key}: must be a finite number, got {value}")
    positive = {"train.batch_size": cfg.train.batch_size, "train.grad_accum_steps": cfg.train.grad_accum_steps,
                "train.log_every": cfg.train.log_every, "train.checkpoint_every": cfg.train.checkpoint_every,
                "data.max_length": cfg.data.max_length, "train.eval_batch_size": cfg.train.eval_batch_size}
    for key, value in positive.items():
        if value < 1:
            raise TfllmError(f"config key {key}: must be at least 1, got {value}")
    if cfg.train.epochs <= 0 and not cfg.train.max_steps:
        raise TfllmError("config key train.epochs: must be positive")
    if cfg.train.learning_rate <= 0:
        raise TfllmError("config key train.learning_rate: must be positive")
    if cfg.data.max_length > 512:
        raise TfllmError("config key data.max_length: BERT position embeddings stop at 512")
    comp = cfg.compression
    enabled = [k for k in ("pruning", "qat", "distillation") if getattr(comp, k).enabled]
    if enabled and not task.supports_compression:
        raise TfllmError(f"config key compression.{enabled[0]}.enabled: train.task "
                         f"{cfg.train.task} does not support compression phases")
