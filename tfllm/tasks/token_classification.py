"""Token classification / named-entity recognition: ``train.task: token_classification``.

Data: CoNLL column files (a word and its tag per line, blank line between sentences,
``-DOCSTART-`` skipped; ``data.token_index`` / ``data.tag_index`` pick the columns) or JSONL with
``tokens`` / ``tags`` lists, tagged in IOB1, IOB2 or BIOES (``data.tag_scheme``; checked, and
converted to IOB2, which the model predicts). Words are split into word-pieces by the fast
tokenizer; a word's tag sits on its first piece, the other pieces are ignored. Sentences longer
than ``data.max_length`` pieces become overlapping windows (``data.stride`` pieces shared), and
each word's prediction comes from the window where it has most context.

Model: ``TFBertForTokenClassification`` with a softmax per piece, or with ``model.crf: true`` a
linear-chain CRF over the words' first-piece scores (:mod:`tfllm.models.crf`; its transitions are
saved as ``model/crf.json`` and applied by Viterbi decoding at prediction, for every backend).
Training monitors the dev token accuracy; the final report is entity-level precision / recall /
F1 by type (seqeval, strict IOB2).

    >>> run_dir = run_training(load_config("configs/conll2003_minilm.yaml"))
    >>> Predictor.load(run_dir).predict(["Peter Blackburn met EU officials in Brussels."])
    [{'text': ..., 'entities': [{'entity': 'PER', 'text': 'Peter Blackburn', 'start': 0, 'end': 15}, ...]}]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras
from transformers import TFBertForTokenClassification

from tfllm import io, rundir
from tfllm.data.pipeline import IGNORE
from tfllm.data.readers import read_json
from tfllm.data.splits import random_split, seeded_subset
from tfllm.data.token_tags import (TaggedSentences, TaggedWindows, convert_sentences, encode_tagged, entities,
                                   entity_metrics, merge_predictions, read_tagged, tag_names, tags_to_ids,
                                   words_with_offsets)
from tfllm.data.tokenization import Encoded, load_tokenizer
from tfllm.errors import TfllmError
from tfllm.models.base import TaskModel
from tfllm.models.checkpoints import load_pretrained, resolve_checkpoint
from tfllm.models.crf import CRF, compact
from tfllm.models.freezing import apply_freezing
from tfllm.tasks.base import Task, TaskData, plan_splits, register

log = logging.getLogger("tfllm")
CRF_FILE = "crf.json"  # in model/: the CRF's transitions, start and end scores


class BertTagger(TaskModel):
    """``call`` returns float32 scores ``[batch, pieces, tags]``; the loss is the mean cross-entropy
    over a window's labelled pieces, or with a CRF its negative log-likelihood per word."""

    def __init__(self, bert, num_tags: int, crf: bool = False, crf_lr_multiplier: float = 100.0, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert
        self.crf = CRF(num_tags, crf_lr_multiplier, name="crf") if crf else None
        self.accuracy = tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, inputs, training=False):
        return tf.cast(self.bert(inputs, training=training).logits, tf.float32)

    def per_example_loss(self, x, y, training):
        scores = self(x, training=training)
        labelled = y != IGNORE
        words = tf.maximum(tf.reduce_sum(tf.cast(labelled, tf.float32), axis=1), 1.0)
        if self.crf is not None:
            emissions, mask = compact(scores, labelled)
            tags, _ = compact(tf.where(labelled, y, 0), labelled)
            loss = -self.crf.log_likelihood(emissions, tags, mask) / words
        else:
            losses = tf_keras.losses.sparse_categorical_crossentropy(tf.where(labelled, y, 0), scores,
                                                                     from_logits=True)
            loss = tf.reduce_sum(losses * tf.cast(labelled, tf.float32), axis=1) / words
        return loss, scores

    def update_task_metrics(self, y, scores, sample_weight):
        labelled = y != IGNORE
        self.accuracy.update_state(tf.boolean_mask(y, labelled), tf.boolean_mask(scores, labelled))

    def task_metrics(self):
        return [self.accuracy]

    def crf_weights(self) -> Optional[dict]:
        if self.crf is None:
            return None
        return {name: value.tolist() for name, value in self.crf.scores().items()}

    def save_pretrained(self, directory: str) -> None:
        self.bert.save_pretrained(directory)
        if self.crf is not None:
            io.write_json(Path(directory) / CRF_FILE, self.crf_weights())


@dataclass
class TaggingData(TaskData):
    dev_sentences: TaggedSentences = None
    dev_windows: TaggedWindows = None


@dataclass
class WindowedText(Encoded):
    """Encoded windows of raw texts, with the words (and character offsets) they came from."""
    windows: Optional[TaggedWindows] = None
    words: Optional[list] = None


def viterbi(scores: np.ndarray, transitions: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The best tag path ``[n]`` for one sequence of emission scores ``[n, tags]``."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    best, back = start + scores[0], []
    for row in scores[1:]:
        candidates = best[:, None] + transitions
        back.append(candidates.argmax(0))
        best = candidates.max(0) + row
    path = [int((best + end).argmax())]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return np.asarray(path[::-1])


def first_pieces(word_ids: np.ndarray) -> np.ndarray:
    """Pieces that start a word inside a window (a window may begin in the middle of one)."""
    previous = np.concatenate([[-1], word_ids[:-1]])
    return (word_ids >= 0) & (word_ids != previous)


@register
class TokenClassificationTask(Task):
    name = "token_classification"
    head = "TFBertForTokenClassification"
    monitor = "accuracy"
    higher_is_better = True

    tag_names: Optional[list[str]] = None
    crf: Optional[dict] = None

    @property
    def label_names(self) -> Optional[list[str]]:
        return self.tag_names

    def check_config(self) -> None:
        if self.cfg.data.text_pair_column:
            raise TfllmError("config key data.text_pair_column: token classification tags single sentences")
        if self.cfg.train.grad_accum_steps > 1 and self.cfg.model.crf:
            raise TfllmError("config key train.grad_accum_steps: the CRF needs whole windows (use 1)")

    def read_sentences(self, spec: str, fmt: Optional[str] = None) -> TaggedSentences:
        d = self.cfg.data
        fmt = fmt or ("auto" if d.format in ("auto", "txt") else d.format)
        return convert_sentences(read_tagged(spec, "conll" if fmt == "txt" else fmt, d.token_index, d.tag_index),
                                 d.tag_scheme)

    def windows(self, tokenizer, sentences: TaggedSentences, labelled: bool = True) -> TaggedWindows:
        d = self.cfg.data
        ids = tags_to_ids(sentences, self.tag_names) if labelled else None
        return encode_tagged(tokenizer, sentences.tokens, ids, d.max_length, d.stride)

    def load_data(self, resume: bool = False) -> TaggingData:
        cfg, d = self.cfg, self.cfg.data
        if not d.train_file:
            raise TfllmError("config key data.train_file: no training data given")
        seed = cfg.train.seed
        train = seeded_subset(self.read_sentences(d.train_file), d.max_train_examples, seed)
        if d.dev_file:
            dev = self.read_sentences(d.dev_file)
        else:
            train, dev = random_split(train, d.dev_fraction, seed)
        dev = seeded_subset(dev, d.max_dev_examples, seed)
        self.tag_names = tag_names(train.tags)
        tokenizer = load_tokenizer(resolve_checkpoint(cfg.model.checkpoint))
        train_windows, dev_windows = self.windows(tokenizer, train), self.windows(tokenizer, dev)
        log.info("data: %d train / %d dev sentences (%d / %d words) -> %d / %d windows; tags: %s",
                 len(train), len(dev), sum(map(len, train.tokens)), sum(map(len, dev.tokens)),
                 len(train_windows), len(dev_windows), ", ".join(self.tag_names))
        return TaggingData(tokenizer, *plan_splits(cfg, train_windows.encoded, dev_windows.encoded),
                           dev, dev_windows)

    def build_model(self, data: TaggingData):
        cfg, names = self.cfg, self.tag_names
        bert, report = load_pretrained(
            TFBertForTokenClassification, cfg.model.checkpoint, num_labels=len(names),
            id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
            hidden_dropout_prob=cfg.model.hidden_dropout, attention_probs_dropout_prob=cfg.model.attention_dropout,
            classifier_dropout=cfg.model.classifier_dropout)
        apply_freezing(bert.bert, cfg.model.freeze_embeddings, cfg.model.freeze_layers)
        model = BertTagger(bert, len(names), cfg.model.crf, cfg.model.crf_lr_multiplier,
                           grad_accum_steps=cfg.train.grad_accum_steps, max_grad_norm=cfg.train.max_grad_norm)
        return model, report

    def save_artifacts(self, run_dir: Path, data: TaggingData) -> None:
        io.write_json(run_dir / rundir.LABEL_MAP, {"labels": self.tag_names})

    def final_outputs(self, model, data: TaggingData, trainer):
        self.crf = model.crf_weights()
        return self.outputs_of(model, data.tokenizer, data.dev.encoded)

    def write_report(self, run_dir: Path, data: TaggingData, outputs) -> dict:
        predicted = self.word_tags(data.dev_windows, outputs, [len(t) for t in data.dev_sentences.tokens])
        return write_tagging_report(run_dir / rundir.EVAL / "dev", data.dev_sentences, predicted,
                                    f"dev ({data.dev_sentences.source})")

    # --- inference ---------------------------------------------------------------------------
    def word_tags(self, windows: TaggedWindows, outputs, lengths) -> list[list[str]]:
        """Per-sentence word tags from per-window piece scores (argmax, or CRF Viterbi)."""
        piece_ids = []
        for k, scores in enumerate(outputs):
            if self.crf is None:
                piece_ids.append(scores.argmax(-1))
                continue
            starts = first_pieces(windows.word_ids[k])
            ids = np.zeros(len(scores), np.int64)
            ids[starts] = viterbi(scores[starts], *(np.asarray(self.crf[n]) for n in ("transitions", "start", "end")))
            piece_ids.append(ids)
        merged = merge_predictions(windows, piece_ids, lengths)
        return [[self.tag_names[i] for i in sentence] for sentence in merged]

    def load_artifacts(self, run_dir: Path) -> None:
        path = Path(run_dir) / rundir.LABEL_MAP
        self.tag_names = list(read_json(path).get("labels") or [])
        if not self.tag_names:
            raise TfllmError(f'{path}: expected {{"labels": ["O", ...]}}')
        crf_file = Path(run_dir) / rundir.MODEL / CRF_FILE
        self.crf = read_json(crf_file) if crf_file.is_file() else None

    def artifacts(self) -> dict:
        return {"labels": self.tag_names, "crf": self.crf, "stride": self.cfg.data.stride}

    def restore_artifacts(self, values: dict) -> None:
        self.tag_names, self.crf = list(values["labels"]), values.get("crf")

    def wrap_model(self, hf_model) -> BertTagger:
        return BertTagger(hf_model, hf_model.config.num_labels)

    def encode(self, tokenizer, texts, pairs=None) -> WindowedText:
        words = [words_with_offsets(tokenizer, text) for text in texts]
        for number, found in enumerate(words, start=1):
            if not found:
                raise TfllmError(f"text {number} has no words")
        d = self.cfg.data
        windows = encode_tagged(tokenizer, [[w for w, _ in ws] for ws in words], None, d.max_length, d.stride)
        e = windows.encoded
        return WindowedText(e.input_ids, e.token_type_ids, None, windows, words)

    def rows(self, texts, pairs, outputs, encoded: WindowedText, tokenizer) -> list[dict]:
        tags = self.word_tags(encoded.windows, outputs, [len(w) for w in encoded.words])
        return [{"text": text, "entities": entities(text, words, sentence_tags)}
                for text, words, sentence_tags in zip(texts, encoded.words, tags)]

    def serving_outputs(self, logits) -> dict:
        return {"tag_ids": tf.argmax(logits, axis=-1, output_type=tf.int32), "logits": logits}

    def evaluate_file(self, predictor, data_file: str, out_dir: Path, **columns) -> dict:
        sentences = self.read_sentences(data_file, columns.get("format"))
        windows = self.windows(predictor.tokenizer, sentences, labelled=False)
        outputs = predictor.backend.outputs(windows.encoded, columns.get("batch_size") or 64)
        predicted = self.word_tags(windows, outputs, [len(t) for t in sentences.tokens])
        return write_tagging_report(out_dir, sentences, predicted, data_file)


def write_tagging_report(out_dir: Path, sentences: TaggedSentences, predicted: list[list[str]], title: str) -> dict:
    """``predictions.txt`` (CoNLL: word, gold tag, predicted tag), ``metrics.json`` and
    ``entity_report.txt`` under ``out_dir``; prints and returns the scalar metrics."""
    metrics = entity_metrics(sentences.tags, predicted)
    lines = []
    for words, gold, guess in zip(sentences.tokens, sentences.tags, predicted):
        lines += [f"{w} {g} {p}" for w, g, p in zip(words, gold, guess)] + [""]
    out_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(out_dir / "predictions.txt", "\n".join(lines))
    io.write_text(out_dir / "entity_report.txt", metrics["report"])
    io.write_json(out_dir / "metrics.json", {k: v for k, v in metrics.items() if k != "report"})
    print(f"\n{title}: entity precision={metrics['precision']:.4f} recall={metrics['recall']:.4f} "
          f"f1={metrics['f1']:.4f} token_accuracy={metrics['token_accuracy']:.4f} "
          f"({len(sentences)} sentences)")
    print(metrics["report"])
    return {"examples": len(sentences), **{k: v for k, v in metrics.items() if k not in ("report", "per_type")},
            "per_type_f1": {k: v["f1"] for k, v in metrics["per_type"].items()}}
