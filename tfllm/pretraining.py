"""Masked-LM pretraining run (``train.task=masked_lm``), on the same Trainer and run directory.

``python -m tfllm.train --config configs/mlm_imdb_continue.yaml`` continues pretraining of the
packaged MiniLM on a text corpus; ``configs/mlm_scratch_tiny.yaml`` first trains a WordPiece
vocabulary on the corpus, then pretrains a small BERT from random initialisation.

The run directory is a checkpoint: ``model.checkpoint=runs/<run>/model`` (or just the run
directory) in a fine-tuning config starts a classifier from it, and
``python -m tfllm.predict RUN_DIR --fill-mask "the movie was [MASK] ."`` shows what it learned.

Besides the common files (config.yaml, run_info.json, model/, checkpoints/, tensorboard/) a run
holds ``tokenizer/`` when the vocabulary was trained (resume reuses it) and ``metrics.json``
with the held-out loss, perplexity and masked-token accuracy, and the corpus statistics.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tfllm import io, rundir
from tfllm.config import Config
from tfllm.errors import TfllmError

log = logging.getLogger("tfllm")


@dataclass
class PretrainingData:
    tokenizer: object
    trained_vocab: bool
    train: "SplitData"
    dev: "SplitData"
    stats: dict


def check_pretraining_values(cfg: Config) -> None:
    """Masked-LM-specific range checks (before anything is read or written)."""
    from tfllm.data.masking import check_probability
    from tfllm.data.vocab import check_vocab_size
    from tfllm.models.masked_lm import SCRATCH

    check_probability(cfg.data.mlm_probability)
    model = cfg.model
    sizes = {k: getattr(model, k) for k in ("preset", "num_layers", "hidden_size", "num_heads",
                                           "intermediate_size", "vocab_size")}
    if model.checkpoint != SCRATCH:
        given = [k for k, v in sizes.items() if v is not None]
        if given:
            raise TfllmError(f"config key model.{given[0]}: sizes apply only to a model trained from "
                             f"scratch (model.checkpoint=scratch); {model.checkpoint} has its own")
        if model.tokenizer:
            raise TfllmError("config key model.tokenizer: only for model.checkpoint=scratch (a "
                             "checkpoint brings its own tokenizer)")
    if model.vocab_size is not None:
        check_vocab_size(model.vocab_size)
        if model.tokenizer:
            raise TfllmError("config keys model.vocab_size and model.tokenizer: give one (train a "
                             "vocabulary, or reuse a tokenizer)")
    if cfg.data.max_documents is not None and cfg.data.max_documents < 1:
        raise TfllmError(f"config key data.max_documents: must be at least 1, got {cfg.data.max_documents}")
    if cfg.data.max_length < 8:
        raise TfllmError(f"config key data.max_length: {cfg.data.max_length} is too short for "
                         "masked-LM sequences (at least 8)")


def load_pretraining_tokenizer(cfg: Config, train_texts, resume: bool):
    """The checkpoint's tokenizer, a reused one, or a WordPiece vocabulary trained on ``train_texts``."""
    from tfllm.data.tokenization import load_tokenizer
    from tfllm.data.vocab import train_wordpiece
    from tfllm.models.checkpoints import resolve_checkpoint
    from tfllm.models.masked_lm import SCRATCH

    model = cfg.model
    if model.checkpoint != SCRATCH:
        return load_tokenizer(resolve_checkpoint(model.checkpoint)), False
    if model.vocab_size is None:
        return load_tokenizer(resolve_checkpoint(model.tokenizer or "packaged:minilm-l6")), False
    saved = cfg.run_dir / "tokenizer"
    if resume and (saved / "vocab.txt").is_file():
        log.info("resume: reusing the vocabulary trained before (%s)", saved)
        return load_tokenizer(saved), True
    started = time.time()
    tokenizer = train_wordpiece(train_texts, model.vocab_size)
    log.info("trained a WordPiece vocabulary of %d tokens on %d documents in %.1f s", len(tokenizer),
             len(train_texts), time.time() - started)
    return tokenizer, True


def prepare_pretraining_data(cfg: Config, resume: bool = False, with_train: bool = True) -> PretrainingData:
    """Read the corpus, hold out text, get the tokenizer, cut sequences, plan batches with masking.

    ``with_train=False`` prepares only the held-out side (``train`` is then None)."""
    from tfllm.data.corpus import encode_corpus, load_corpus_splits, subset
    from tfllm.data.masking import MaskingSpec, make_masking_fn
    from tfllm.data.pipeline import BatchPlan
    from tfllm.training.trainer import SplitData

    data, seed = cfg.data, cfg.train.seed
    started = time.time()
    splits = load_corpus_splits(data, seed)
    tokenizer, trained = load_pretraining_tokenizer(cfg, splits.train.documents, resume)
    sides = []
    if with_train:
        train, train_stats = encode_corpus(tokenizer, splits.train, data, seed)
        train = subset(train, data.max_train_examples, seed)
        sides.append(("train", train_stats, train))
    dev, dev_stats = encode_corpus(tokenizer, splits.dev, data, seed + 1)
    dev = subset(dev, data.max_dev_examples, seed)
    sides.append(("held-out", dev_stats, dev))
    mode = "nsp pairs" if data.nsp else data.corpus_mode
    for name, stats, enc in sides:
        log.info("corpus %s: %d documents, %d tokens -> %d sequences (%s, max_length %d)%s", name,
                 stats.documents, stats.tokens, len(enc), mode, data.max_length,
                 "" if len(enc) == stats.sequences else f" (of {stats.sequences})")
    log.info("corpus prepared in %.1f s", time.time() - started)
    spec = MaskingSpec.from_tokenizer(tokenizer, data.mlm_probability, data.whole_word_masking)
    stats = {"dev": dict(dev_stats.as_dict(), used_sequences=len(dev), source=splits.dev.source)}
    train_split = None
    if with_train:
        stats["train"] = dict(train_stats.as_dict(), used_sequences=len(train), source=splits.train.source)
        train_split = SplitData(train, BatchPlan(train.lengths, cfg.train.batch_size, seed, True,
                                                 data.bucketing, data.bucket_window),
                                make_masking_fn(spec, seed, data.nsp))
    return PretrainingData(
        tokenizer, trained, train_split,
        SplitData(dev, BatchPlan(dev.lengths, cfg.train.eval_batch_size, shuffle=False,
                                 bucketing=data.bucketing), make_masking_fn(spec, seed + 1, data.nsp)),
        stats)


def run_pretraining(cfg: Config, overwrite: bool = False, resume: bool = False) -> Path:
    """Pretrain as ``cfg`` says; returns the run directory."""
    from tfllm.models.masked_lm import build_masked_lm
    from tfllm.train import (_check_values, already_finished, ensure_logging, prepare_run_dir,
                             save_model, seed_everything, write_run_metadata)
    from tfllm.training.strategy import is_chief, make_strategy
    from tfllm.training.trainer import Trainer

    started = time.time()
    ensure_logging()
    _check_values(cfg)
    check_pretraining_values(cfg)
    if already_finished(cfg, resume):
        return cfg.run_dir
    strategy = make_strategy(cfg.distribute)
    if is_chief(strategy):
        rundir.check_claim(cfg.run_dir, overwrite, resume)
    data = prepare_pretraining_data(cfg, resume)
    precision = seed_everything(cfg)
    with strategy.scope():
        model, report = build_masked_lm(cfg.model, data.tokenizer, cfg.data.nsp,
                                        cfg.train.grad_accum_steps, cfg.train.max_grad_norm)
    log.info(report.summary())

    chief = is_chief(strategy)
    run_dir = prepare_run_dir(cfg, overwrite, resume) if chief else Path(tempfile.mkdtemp("-tfllm-worker"))
    write_run_metadata(run_dir, cfg, resume, precision, strategy.num_replicas_in_sync)
    if data.trained_vocab and not (run_dir / "tokenizer" / "vocab.txt").is_file():
        with io.atomic_directory(run_dir / "tokenizer") as tmp:
            data.tokenizer.save_pretrained(str(tmp))
    trainer = Trainer(model, cfg.train, run_dir, strategy, None, cfg.data.pad_to_multiple_of,
                      restore_dir=cfg.run_dir / "checkpoints")
    state = trainer.fit(data.train, data.dev, resume=resume,
                        config_text=(run_dir / "config.yaml").read_text())
    save_model(run_dir, model, data.tokenizer)
    metrics, _ = trainer.evaluate(data.dev)
    summary = {"dev": metrics, "steps": state.step, "best_step": state.best_step,
               "stopped_early": state.stopped_early, "train_seconds": round(time.time() - started, 1),
               "history": state.history, "corpus": data.stats}
    io.write_json(run_dir / "metrics.json", summary)
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"held-out ({data.stats['dev']['source']}): {shown}")
    print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})")
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        return cfg.run_dir
    return run_dir


def heldout_metrics(cfg: Config, checkpoint: str | None = None) -> dict:
    """Held-out loss / perplexity / masked-token accuracy of ``checkpoint`` (default
    ``cfg.model.checkpoint``) on the held-out text ``cfg`` describes, without training.

    The held-out split and its masks are exactly those a run with ``cfg`` evaluates on, so
    ``heldout_metrics(cfg)`` before and ``heldout_metrics(cfg, run_dir)`` after a run compare
    like with like. A run directory as ``checkpoint`` brings its own tokenizer (and MLM head).
    """
    import dataclasses

    from tfllm.models.masked_lm import build_masked_lm
    from tfllm.train import ensure_logging, seed_everything
    from tfllm.training.strategy import make_strategy
    from tfllm.training.trainer import Trainer, _sample_features

    if checkpoint is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, checkpoint=str(checkpoint), preset=None, num_layers=None, hidden_size=None,
            num_heads=None, intermediate_size=None, vocab_size=None, tokenizer=None))
    ensure_logging()
    check_pretraining_values(cfg)
    strategy = make_strategy(cfg.distribute)
    data = prepare_pretraining_data(cfg, with_train=False)
    seed_everything(cfg)
    with strategy.scope():
        model, report = build_masked_lm(cfg.model, data.tokenizer, cfg.data.nsp)
    log.info(report.summary())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, cfg.train, Path(tmp), strategy, None, cfg.data.pad_to_multiple_of)
        trainer.compile(1, _sample_features(data.dev.encoded))
        metrics, _ = trainer.evaluate(data.dev)
    return metrics
