"""Plain-text corpora for masked-LM pretraining: read, hold out, tokenize, cut into sequences.

Sources (``data.train_file`` / ``data.dev_file``, or ``data.hf_dataset``):

* text files (``.txt``, or any other extension with ``data.format=txt``): one document a line
  (``data.documents=line``, e.g. IMDB ``unsup.txt``, WikiText paragraphs), or documents separated
  by blank lines whose lines are joined (``data.documents=blank_line``, e.g. hard-wrapped novels);
* several files: a glob (``janeausten/*.txt``) or a comma-separated list, read in order;
* a text column of CSV / TSV / JSONL / JSON / parquet files (``data.text_column``);
* a Hugging Face dataset name or ``save_to_disk`` directory (``data.hf_dataset``).

Blank documents are skipped. Without a ``dev_file`` (or ``hf_dev_split``), a seeded
``data.dev_fraction`` of the *documents* is held out, so no held-out text leaks into training.

Sequences (``data.corpus_mode``):

* ``blocks``: the documents' tokens are concatenated with a [SEP] after each document, and cut
  into blocks of exactly ``max_length`` tokens, ``[CLS] ... [SEP]``; the tail that does not fill
  a block is dropped (as Hugging Face's ``run_mlm.py`` does). No padding is ever needed.
* ``line_by_line``: each document is one sequence ``[CLS] doc [SEP]``, truncated to
  ``max_length``; batches pad to their longest (with length bucketing).
* with ``data.nsp``: sentence-pair instances ``[CLS] A [SEP] B [SEP]`` of up to ``max_length``
  tokens, built as Google's BERT ``create_pretraining_data.py`` does: A is a run of sentences
  from a document; B is the text that follows (label 0) or, with probability 1/2, text from
  another random document (label 1). Sentences are split with a simple punctuation rule.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from tfllm.config import DataConfig
from tfllm.data.readers import FORMATS, data_paths, read_hf_split, read_table, read_text
from tfllm.data.tokenization import Encoded
from tfllm.errors import TfllmError

log = logging.getLogger("tfllm")
TOKENIZE_CHUNK = 2000  # documents per tokenizer call (keeps Python int lists small)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|<br\s*/?>(?:\s*<br\s*/?>)*\s*")


@dataclass
class Corpus:
    """Documents (strings) from one or more sources."""
    documents: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.documents)


@dataclass
class CorpusSplits:
    train: Corpus
    dev: Corpus


@dataclass
class SequenceStats:
    documents: int
    tokens: int
    sequences: int
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "sequences": self.sequences, **self.extra}


# --- reading ----------------------------------------------------------------------------------
def corpus_paths(spec: str) -> list[Path]:
    """Files named by a path, a ``builtin:`` name, a glob or a comma-separated list of those."""
    return data_paths(spec, "corpus file")


def split_documents(text: str, documents: str) -> list[str]:
    """Documents of a text file: each non-blank line, or blank-line separated paragraphs."""
    if documents == "line":
        return [line.strip() for line in text.splitlines() if line.strip()]
    paragraphs = re.split(r"\n[ \t\r\f\v]*\n", text)
    return [" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs
            if p.strip()]


def read_file_documents(path: Path, cfg: DataConfig) -> list[str]:
    suffixes = [s for s in path.suffixes if s in FORMATS]
    fmt = cfg.format if cfg.format != "auto" else (FORMATS[suffixes[-1]] if suffixes else "txt")
    if fmt == "txt":
        return split_documents(read_text(path), cfg.documents)
    frame = read_table(path, fmt, cfg.has_header, cfg.column_names)
    if cfg.text_column not in frame.columns:
        raise TfllmError(f"{path}: no column {cfg.text_column!r} (columns: "
                         f"{', '.join(map(str, frame.columns))}); set data.text_column")
    return frame_documents(frame[cfg.text_column].tolist())


def frame_documents(values: Iterable) -> list[str]:
    return [str(v).strip() for v in values if isinstance(v, str) and v.strip()]


def read_corpus(spec: str, cfg: DataConfig, limit: Optional[int] = None) -> Corpus:
    """Every document of the files ``spec`` names (the first ``limit`` if given)."""
    documents: list[str] = []
    for path in corpus_paths(spec):
        documents += read_file_documents(path, cfg)
        if limit and len(documents) >= limit:
            documents = documents[:limit]
            break
    if not documents:
        raise TfllmError(f"{spec}: the corpus is empty (no non-blank text)")
    return Corpus(documents, spec)


def read_hf_corpus(cfg: DataConfig, split: str, limit: Optional[int] = None) -> Corpus:
    frame, _ = read_hf_split(cfg.hf_dataset, split, cfg.hf_config)
    source = f"{cfg.hf_dataset}[{split}]"
    if cfg.text_column not in frame.columns:
        raise TfllmError(f"{source}: no column {cfg.text_column!r} (columns: "
                         f"{', '.join(map(str, frame.columns))}); set data.text_column")
    documents = frame_documents(frame[cfg.text_column].tolist())[:limit or None]
    if not documents:
        raise TfllmError(f"{source}: the corpus is empty (no non-blank text)")
    return Corpus(documents, source)


def load_corpus_splits(cfg: DataConfig, seed: int) -> CorpusSplits:
    """Training and held-out documents as the config says (a file/split, or a held-out fraction)."""
    if cfg.hf_dataset:
        train = read_hf_corpus(cfg, cfg.hf_train_split, cfg.max_documents)
        dev = read_hf_corpus(cfg, cfg.hf_dev_split, cfg.max_documents) if cfg.hf_dev_split else None
    else:
        if not cfg.train_file:
            raise TfllmError("config key data.train_file: no corpus given (or set data.hf_dataset)")
        train = read_corpus(cfg.train_file, cfg, cfg.max_documents)
        dev = read_corpus(cfg.dev_file, cfg, cfg.max_documents) if cfg.dev_file else None
    if dev is None:
        train, dev = hold_out(train, cfg.dev_fraction, seed)
    return CorpusSplits(train, dev)


def hold_out(corpus: Corpus, fraction: float, seed: int) -> tuple[Corpus, Corpus]:
    """Split off a seeded random ``fraction`` of the documents (at least one) as held-out text."""
    if not 0 < fraction < 1:
        raise TfllmError(f"config key data.dev_fraction: {fraction} must be between 0 and 1")
    n = len(corpus)
    if n < 2:
        raise TfllmError(f"{corpus.source}: one document cannot be split into training and held-out "
                         "text; give data.dev_file, or data.documents=blank_line for paragraphs")
    k = min(n - 1, max(1, int(round(fraction * n))))
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    pick = lambda keep: [d for d, h in zip(corpus.documents, held) if h == keep]  # noqa: E731
    return (Corpus(pick(False), corpus.source),
            Corpus(pick(True), f"{corpus.source} (held-out {fraction:g} of documents)"))


# --- tokenizing and cutting -------------------------------------------------------------------
def tokenize_documents(tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text, without special tokens, as int32 arrays."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        batch = tokenizer(list(texts[start:start + TOKENIZE_CHUNK]), add_special_tokens=False,
                          return_attention_mask=False, return_token_type_ids=False, verbose=False)
        out += [np.asarray(ids, dtype=np.int32) for ids in batch["input_ids"]]
    return out


def build_blocks(docs: Sequence[np.ndarray], cls_id: int, sep_id: int, max_length: int,
                 source: str = "corpus") -> tuple[Encoded, SequenceStats]:
    """Concatenate documents (each followed by [SEP]) and cut ``[CLS] chunk [SEP]`` blocks."""
    width = max_length - 2
    if width < 1:
        raise TfllmError(f"config key data.max_length: {max_length} leaves no room for text in a block")
    pieces = []
    for ids in docs:
        if len(ids):
            pieces += [ids, np.array([sep_id], dtype=np.int32)]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    count = len(stream) // width
    if count == 0:
        raise TfllmError(f"{source}: {len(stream)} tokens, fewer than one block of {max_length} "
                         "(data.max_length); use more text, a smaller data.max_length, or "
                         "data.corpus_mode=line_by_line")
    body = stream[:count * width].reshape(count, width)
    blocks = np.concatenate([np.full((count, 1), cls_id, np.int32), body,
                             np.full((count, 1), sep_id, np.int32)], axis=1)
    types = np.zeros_like(blocks)
    stats = SequenceStats(len(docs), int(len(stream)), count,
                          {"dropped_tail_tokens": int(len(stream) - count * width)})
    return Encoded(list(blocks), list(types)), stats


def build_lines(docs: Sequence[np.ndarray], cls_id: int, sep_id: int, max_length: int,
                source: str = "corpus") -> tuple[Encoded, SequenceStats]:
    """One ``[CLS] doc [SEP]`` sequence per non-empty document, truncated to ``max_length``."""
    ids, truncated = [], 0
    for doc in docs:
        if not len(doc):
            continue
        truncated += int(len(doc) > max_length - 2)
        ids.append(np.concatenate([[cls_id], doc[:max_length - 2], [sep_id]]).astype(np.int32))
    if not ids:
        raise TfllmError(f"{source}: no tokens in the corpus")
    stats = SequenceStats(len(docs), int(sum(len(d) for d in docs)), len(ids),
                          {"truncated_documents": truncated})
    return Encoded(ids, [np.zeros_like(x) for x in ids]), stats


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s and s.strip()]


def build_nsp_pairs(doc_sentences: Sequence[Sequence[np.ndarray]], cls_id: int, sep_id: int,
                    max_length: int, seed: int, source: str = "corpus") -> tuple[Encoded, SequenceStats]:
    """Sentence-pair instances with next-sentence labels (0 true next, 1 random), about half each.

    ``doc_sentences``: per document, the token ids of its sentences. Sentences are gathered into a
    chunk of up to ``max_length - 3`` tokens; A is its first 1..k-1 sentences; B is the rest
    (true next) or, with probability 1/2, sentences from another random document (random next),
    in which case the unused sentences are put back for the next chunk. A one-sentence chunk is
    cut inside the sentence for a true pair. Pairs are truncated from the end of the longer side.
    """
    docs = [[s for s in d if len(s)] for d in doc_sentences]
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise TfllmError(f"{source}: next-sentence prediction needs at least 2 non-empty documents")
    budget = max_length - 3
    if budget < 2:
        raise TfllmError(f"config key data.max_length: {max_length} is too short for sentence pairs")
    rng = np.random.default_rng(seed)
    ids, types, labels = [], [], []
    for d, sentences in enumerate(docs):
        chunk, length, i = [], 0, 0
        while i < len(sentences):
            chunk.append(sentences[i])
            length += len(sentences[i])
            if i == len(sentences) - 1 or length >= budget:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = np.concatenate(chunk[:a_end])
                is_random = bool(rng.random() < 0.5)
                if is_random:
                    other = int(rng.integers(len(docs) - 1))
                    other += other >= d  # any document but this one
                    start = int(rng.integers(len(docs[other])))
                    b_parts, b_len = [], 0
                    for s in docs[other][start:]:
                        b_parts.append(s)
                        b_len += len(s)
                        if b_len >= budget - len(a):
                            break
                    b = np.concatenate(b_parts)
                    i -= len(chunk) - a_end  # put the unused sentences back
                elif a_end < len(chunk):
                    b = np.concatenate(chunk[a_end:])
                elif len(a) >= 2:
                    cut = int(rng.integers(1, len(a)))
                    a, b = a[:cut], a[cut:]
                else:  # a one-token document: no pair to make
                    chunk, length, i = [], 0, i + 1
                    continue
                while len(a) + len(b) > budget:
                    if len(a) >= len(b):
                        a = a[:-1]
                    else:
                        b = b[:-1]
                ids.append(np.concatenate([[cls_id], a, [sep_id], b, [sep_id]]).astype(np.int32))
                types.append(np.concatenate([np.zeros(len(a) + 2, np.int32), np.ones(len(b) + 1, np.int32)]))
                labels.append(int(is_random))
                chunk, length = [], 0
            i += 1
    if not ids:
        raise TfllmError(f"{source}: no sentence pairs could be built")
    tokens = int(sum(len(s) for d in docs for s in d))
    stats = SequenceStats(len(docs), tokens, len(ids), {"random_next_fraction": float(np.mean(labels))})
    return Encoded(ids, types, np.asarray(labels, dtype=np.int32)), stats


def encode_corpus(tokenizer, corpus: Corpus, cfg: DataConfig, seed: int) -> tuple[Encoded, SequenceStats]:
    """Token sequences of a corpus as ``cfg`` says (blocks, lines, or NSP pairs)."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise TfllmError("the tokenizer has no [CLS]/[SEP] tokens; masked-LM training needs them")
    if cfg.nsp:
        sentences = [split_sentences(doc) for doc in corpus.documents]
        flat = tokenize_documents(tokenizer, [s for doc in sentences for s in doc])
        grouped, at = [], 0
        for doc in sentences:
            grouped.append(flat[at:at + len(doc)])
            at += len(doc)
        return build_nsp_pairs(grouped, cls_id, sep_id, cfg.max_length, seed, corpus.source)
    docs = tokenize_documents(tokenizer, corpus.documents)
    if cfg.corpus_mode == "blocks":
        return build_blocks(docs, cls_id, sep_id, cfg.max_length, corpus.source)
    return build_lines(docs, cls_id, sep_id, cfg.max_length, corpus.source)


def subset(encoded: Encoded, k: Optional[int], seed: int) -> Encoded:
    """A seeded random ``k`` of the sequences (all if ``k`` is None or not smaller)."""
    if not k or len(encoded) <= k:
        return encoded
    pick = np.sort(np.random.default_rng(seed).choice(len(encoded), size=k, replace=False))
    labels = encoded.labels[pick] if encoded.labels is not None else None
    return Encoded([encoded.input_ids[i] for i in pick], [encoded.token_type_ids[i] for i in pick], labels)
