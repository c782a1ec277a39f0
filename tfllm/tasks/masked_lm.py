"""Masked-LM pretraining: ``train.task: masked_lm``, on the same Trainer, lifecycle and run directory.

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

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfllm import io
from tfllm.config import Config
from tfllm.data.corpus import encode_corpus, load_corpus_splits, subset
from tfllm.data.masking import MaskingSpec, check_probability, make_masking_fn
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.data.vocab import check_vocab_size, train_wordpiece
from tfllm.errors import TfllmError
from tfllm.models.checkpoints import resolve_checkpoint
from tfllm.models.masked_lm import SCRATCH, build_masked_lm
from tfllm.tasks.base import Task, TaskData, plan_splits, register
from tfllm.cli import ensure_logging
from tfllm.training.strategy import make_strategy, seed_everything
from tfllm.training.trainer import Trainer, sample_features

log = logging.getLogger("tfllm")
TOKENIZER_DIR = "tokenizer"  # a vocabulary trained on the corpus (resume reuses it)


@dataclass
class PretrainingData(TaskData):
    trained_vocab: bool = False
    stats: dict = None


@register
class MaskedLMTask(Task):
    name = "masked_lm"
    head = "TFBertForMaskedLM"
    final_eval_in_float32 = False  # the held-out metrics are the trainer's own masked batches
    monitor = "loss"
    higher_is_better = False
    top_k = 5  # tokens shown per [MASK] by predict

    def check_config(self) -> None:
        check_pretraining_values(self.cfg)

    def load_data(self, resume: bool = False) -> PretrainingData:
        return prepare_pretraining_data(self.cfg, resume)

    def build_model(self, data: PretrainingData):
        cfg = self.cfg
        return build_masked_lm(cfg.model, data.tokenizer, cfg.data.nsp, cfg.train.grad_accum_steps,
                               cfg.train.max_grad_norm)

    def save_artifacts(self, run_dir: Path, data: PretrainingData) -> None:
        if data.trained_vocab and not (run_dir / TOKENIZER_DIR / "vocab.txt").is_file():
            with io.atomic_directory(run_dir / TOKENIZER_DIR) as tmp:
                data.tokenizer.save_pretrained(str(tmp))

    def final_outputs(self, model, data: PretrainingData, trainer) -> dict:
        metrics, _ = trainer.evaluate(data.dev)
        return metrics

    def write_report(self, run_dir: Path, data: PretrainingData, outputs: dict) -> dict:
        shown = " ".join(f"{k}={v:.4f}" for k, v in outputs.items())
        print(f"held-out ({data.stats['dev']['source']}): {shown}")
        return outputs

    def summary_extras(self, data: PretrainingData) -> dict:
        return {"corpus": data.stats}

    # --- inference: fill-mask ------------------------------------------------------------------
    def check_model(self, hf_model, where: Path) -> None:
        if not hasattr(hf_model, "mlm"):
            raise TfllmError(f"{where} holds no masked-LM head; --fill-mask needs a masked_lm run")

    def wrap_model(self, hf_model):
        return lambda features, training=False: hf_model(features, training=training).logits

    def encode(self, tokenizer, texts, pairs=None):
        for number, text in enumerate(texts, start=1):
            if tokenizer.mask_token not in text:
                raise TfllmError(f"text {number} has no {tokenizer.mask_token} token: {text!r}")
        return encode_texts(tokenizer, texts, None, self.cfg.data.max_length)

    def rows(self, texts, pairs, outputs, encoded, tokenizer) -> list[dict]:
        """One row per [MASK]: the text, the mask's number (1-based) and the top-k tokens."""
        rows = []
        for text, ids, logits in zip(texts, encoded.input_ids, outputs):
            for k, position in enumerate(np.flatnonzero(ids == tokenizer.mask_token_id), start=1):
                z = logits[position] - logits[position].max()
                p = np.exp(z) / np.exp(z).sum()
                best = np.argsort(-p)[:self.top_k]
                rows.append({"text": text, "mask": k,
                             "predictions": [{"token": tokenizer.convert_ids_to_tokens(int(i)),
                                              "probability": round(float(p[i]), 6)} for i in best]})
        return rows


def check_pretraining_values(cfg: Config) -> None:
    """Masked-LM-specific range checks (before anything is read or written)."""
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
    model = cfg.model
    if model.checkpoint != SCRATCH:
        return load_tokenizer(resolve_checkpoint(model.checkpoint)), False
    if model.vocab_size is None:
        return load_tokenizer(resolve_checkpoint(model.tokenizer or "packaged:minilm-l6")), False
    saved = cfg.run_dir / TOKENIZER_DIR
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
    if with_train:
        stats["train"] = dict(train_stats.as_dict(), used_sequences=len(train), source=splits.train.source)
    train_split, dev_split = plan_splits(cfg, train if with_train else None, dev,
                                         make_masking_fn(spec, seed, data.nsp),
                                         make_masking_fn(spec, seed + 1, data.nsp))
    return PretrainingData(tokenizer, train_split, dev_split, trained, stats)


def heldout_metrics(cfg: Config, checkpoint: str | None = None) -> dict:
    """Held-out loss / perplexity / masked-token accuracy of ``checkpoint`` (default
    ``cfg.model.checkpoint``) on the held-out text ``cfg`` describes, without training.

    The held-out split and its masks are exactly those a run with ``cfg`` evaluates on, so
    ``heldout_metrics(cfg)`` before and ``heldout_metrics(cfg, run_dir)`` after a run compare
    like with like. A run directory as ``checkpoint`` brings its own tokenizer (and MLM head).
    """
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
        trainer = Trainer(model, cfg.train, Path(tmp), strategy, multiple=cfg.padding_multiple)
        trainer.compile(1, sample_features(data.dev.encoded))
        metrics, _ = trainer.evaluate(data.dev)
    return metrics
