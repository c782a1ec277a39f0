"""Train a model from a config: ``python -m tfllm.train [--config FILE] [key=value ...]``.

With no arguments it fine-tunes the packaged MiniLM on the built-in sentiment data (a few
minutes on 2 CPU cores). Any config value can be overridden, e.g. ``train.epochs=2
output_dir=runs/try``. ``--resume`` continues a stopped run from its last checkpoint;
``--overwrite`` replaces an existing run directory.
"""
from __future__ import annotations

import argparse
import logging
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Optional

from tfllm import io, rundir
from tfllm.cli import main_guard, parse_command_line, setup_logging
from tfllm.config import Config, load_config, save_config, with_absolute_paths
from tfllm.errors import TfllmError

log = logging.getLogger("tfllm")


def prepare_run_dir(cfg: Config, overwrite: bool, resume: bool) -> Path:
    """The run directory, created or claimed safely (:func:`tfllm.rundir.claim`)."""
    return rundir.claim(cfg.run_dir, overwrite=overwrite, resume=resume)


def already_finished(cfg: Config, resume: bool) -> bool:
    """``--resume`` of a finished run changes nothing: say so (and how to train on) instead."""
    from tfllm.data.readers import read_json  # names the file and line of bad UTF-8 / JSON

    if not (resume and rundir.is_finished(cfg.run_dir)):
        return False
    metrics = read_json(cfg.run_dir / rundir.METRICS)
    how = "stopped early" if metrics.get("stopped_early") else "finished"
    log.info("--resume: %s already %s at step %s (best step %s); nothing changed. To train "
             "further, start a new run from it: model.checkpoint=%s output_dir=<new folder>",
             cfg.run_dir, how, metrics.get("steps"), metrics.get("best_step"), cfg.run_dir)
    return True


def versions() -> dict:
    import tensorflow as tf
    import tf_keras
    import transformers

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "tf_keras": tf_keras.__version__, "transformers": transformers.__version__,
            "tfllm": __import__("tfllm").__version__, "platform": platform.platform()}


def run_training(cfg: Config, overwrite: bool = False, resume: bool = False) -> Path:
    """Fine-tune as ``cfg`` says; returns the run directory (see DESIGN.md for its layout).

    Everything that can fail on bad input (config values, data, checkpoint) is checked before the
    run directory is touched, so a failed start never damages an existing run.
    ``train.task=masked_lm`` runs masked-LM pretraining instead (:mod:`tfllm.pretraining`).
    """
    if cfg.train.task == "masked_lm":
        from tfllm.pretraining import run_pretraining

        return run_pretraining(cfg, overwrite=overwrite, resume=resume)
    from tfllm.compression import CompressionPhase, total_steps
    from tfllm.models.classifier import build_classifier
    from tfllm.training.strategy import is_chief, make_strategy
    from tfllm.training.trainer import Trainer

    started = time.time()
    ensure_logging()
    _check_values(cfg)
    if already_finished(cfg, resume):
        return cfg.run_dir
    strategy = make_strategy(cfg.distribute)  # before anything else touches TF devices
    if is_chief(strategy):
        rundir.check_claim(cfg.run_dir, overwrite, resume)  # refuse now, not after minutes of work
    data = prepare_classification_data(cfg)
    precision = seed_everything(cfg)
    with strategy.scope():
        model, report = build_classifier(cfg.model, len(data.label_map), data.label_map.names,
                                         cfg.train.grad_accum_steps, cfg.train.max_grad_norm)
        # Pruning / QAT (cfg.compression): TF-MOT wrappers around the same weights, or a no-op.
        compression = CompressionPhase.start(cfg, model, total_steps(cfg.train, data.train.plan))
        model = compression.model
    log.info(report.summary())

    # Multi-worker: every worker runs every step (they share collectives), but only the chief
    # writes the run directory; the others write to a scratch directory deleted at the end and
    # resume from the chief's checkpoints (shared storage, as TF's multi-worker guide assumes).
    chief = is_chief(strategy)
    run_dir = prepare_run_dir(cfg, overwrite, resume) if chief else Path(tempfile.mkdtemp("-tfllm-worker"))
    write_run_metadata(run_dir, cfg, resume, precision, strategy.num_replicas_in_sync)
    data.label_map.save(run_dir / "label_map.json")
    trainer = Trainer(model, compression.train_config(cfg.train), run_dir, strategy, data.label_map.names,
                      cfg.data.pad_to_multiple_of, restore_dir=cfg.run_dir / "checkpoints",
                      step_callbacks=compression.step_callbacks, final_eval_follows=True)
    state = trainer.fit(data.train, data.dev, resume=resume,
                        config_text=(run_dir / "config.yaml").read_text())
    # QAT: the final report, like the in-loop evaluations, scores the fake-quantised model (what
    # --quantize qat exports), not the float model that model/ stores once the wrappers are gone.
    qat_logits = dev_logits(run_dir, cfg, model, data) if compression.kind == "qat" else None
    model = compression.finish(run_dir, state.step)  # wrappers stripped: a plain BERT is saved
    save_model(run_dir, model, data.tokenizer)
    finish_classification(run_dir, cfg, model, data, state, time.time() - started, qat_logits)
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        return cfg.run_dir
    return run_dir


@dataclass
class ClassificationData:
    """Everything training needs from the data side, validated and tokenized."""
    splits: "LabelledSplits"
    tokenizer: object
    train: "SplitData"
    dev: "SplitData"

    @property
    def label_map(self):
        return self.splits.label_map


def prepare_classification_data(cfg: Config) -> ClassificationData:
    """Read and validate the splits, tokenize them with the checkpoint's tokenizer, plan batches."""
    import numpy as np

    from tfllm.data.pipeline import BatchPlan
    from tfllm.data.splits import load_labelled_splits
    from tfllm.data.tokenization import encode_texts, load_tokenizer
    from tfllm.models.checkpoints import resolve_checkpoint
    from tfllm.training.trainer import SplitData

    splits = load_labelled_splits(cfg.data, cfg.train.seed)
    tokenizer = load_tokenizer(resolve_checkpoint(cfg.model.checkpoint))
    log.info("data: %d train / %d dev examples, %d labels (%s)", len(splits.train), len(splits.dev),
             len(splits.label_map), ", ".join(splits.label_map.names[:10]))

    def encode(examples):
        labels = splits.label_map.encode(examples.labels, examples.source)
        return encode_texts(tokenizer, examples.texts, examples.pairs, cfg.data.max_length, labels)

    train, dev = encode(splits.train), encode(splits.dev)
    log.info("tokens per example: train median %d, max %d (max_length %d)",
             int(np.median(train.lengths)), int(train.lengths.max()), cfg.data.max_length)
    return ClassificationData(
        splits, tokenizer,
        SplitData(train, BatchPlan(train.lengths, cfg.train.batch_size, cfg.train.seed, True,
                                   cfg.data.bucketing, cfg.data.bucket_window)),
        SplitData(dev, BatchPlan(dev.lengths, cfg.train.eval_batch_size, shuffle=False,
                                 bucketing=cfg.data.bucketing)))


def seed_everything(cfg: Config) -> str:
    """Seed Python/NumPy/TF, make dropout resumable, set the precision policy; returns it."""
    import tf_keras

    from tfllm.training.strategy import set_precision

    tf_keras.utils.set_random_seed(cfg.train.seed)
    # Dropout then draws from tf.random.Generator state variables, which our checkpoints save:
    # a resumed run continues the exact random stream of the interrupted one.
    tf_keras.backend.experimental.enable_tf_random_generator()
    return set_precision(cfg.train.mixed_precision)


def write_run_metadata(run_dir: Path, cfg: Config, resume: bool, precision: str, replicas: int) -> None:
    if not (resume and (run_dir / rundir.CONFIG).exists()):
        save_config(with_absolute_paths(cfg), run_dir / rundir.CONFIG)  # usable from any directory
    io.write_json(run_dir / rundir.RUN_INFO, {"versions": versions(), "seed": cfg.train.seed,
                                              "precision": precision, "command": sys.argv,
                                              "replicas": replicas})


def save_model(run_dir: Path, model, tokenizer) -> None:
    """``run_dir/model``: a transformers checkpoint with its tokenizer, replaced atomically."""
    with io.atomic_directory(run_dir / "model") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def dev_logits(run_dir: Path, cfg: Config, model, data: ClassificationData):
    """``model``'s logits on the dev split, in its order."""
    from tfllm.predict import Classifier

    dev = data.splits.dev
    classifier = Classifier(run_dir, model, data.tokenizer, data.label_map.names, cfg.data.max_length, cfg)
    return classifier.logits(dev.texts, dev.pairs)


def finish_classification(run_dir: Path, cfg: Config, model, data: ClassificationData, state,
                          seconds: float, logits=None) -> None:
    """Final dev evaluation (of ``model``, unless its ``logits`` are given): reports under
    ``eval/dev``, ``metrics.json``, the printed report."""
    from tfllm.evaluate import print_metrics, write_evaluation
    from tfllm.training.reporting import write_dev_scalars

    dev = data.splits.dev
    if logits is None:
        logits = dev_logits(run_dir, cfg, model, data)
    labels = data.label_map.encode(dev.labels, dev.source)
    metrics = write_evaluation(run_dir / "eval" / "dev", dev, logits, labels, data.label_map.names)
    final = {k: v for k, v in metrics.items() if k not in ("report", "confusion_matrix")}
    if not state.history or state.history[-1]["step"] != state.step:  # the Trainer left it to us
        write_dev_scalars(run_dir, state.step, final)
        state.history.append({"step": state.step, **final})
    summary = {"dev": final,
               "steps": state.step, "best_step": state.best_step, "stopped_early": state.stopped_early,
               "train_seconds": round(seconds, 1), "history": state.history}
    io.write_json(run_dir / "metrics.json", summary)
    print_metrics(metrics, f"dev ({dev.source})")
    print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})")


def ensure_logging() -> None:
    """Show tfllm's progress lines when the caller (e.g. a notebook) configured no logging."""
    if not logging.getLogger().hasHandlers():
        setup_logging(stream=sys.stdout)


def _check_values(cfg: Config) -> None:
    """Range checks the type system cannot express."""
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


def parse_args(argv: Optional[list[str]] = None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML config (default: the built-in sentiment demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    parser.add_argument("--verbose", action="store_true", help="show library logs")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return parse_command_line(parser, argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, args.overrides)
    if args.resume and (cfg.run_dir / "config.yaml").is_file():
        cfg = load_config(cfg.run_dir / "config.yaml", args.overrides)  # the run's own settings
    run_training(cfg, overwrite=args.overwrite, resume=args.resume)


if __name__ == "__main__":
    main()
