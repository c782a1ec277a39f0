"""Named-entity data: tagged sentences -> IOB2 tags -> word-piece windows -> entities and metrics.

A sentence is a list of words, each with a tag such as ``B-PER`` / ``I-PER`` / ``O``. The model
predicts one tag per word-piece, on the first piece of each word; long sentences are cut into
overlapping windows and each word's prediction is taken from the window where it has the most
context around it.

    >>> sents = convert_sentences(read_tagged("../shared/data/conll2003/dev.txt"), "iob2")
    >>> names = tag_names(sents.tags)                      # ["O", "B-LOC", "I-LOC", ...]
    >>> windows = encode_tagged(tokenizer, sents.tokens, tags_to_ids(sents, names), 128, 32)
    >>> ids = merge_predictions(windows, per_piece_ids, [len(t) for t in sents.tokens])
    >>> entity_metrics(sents.tags, [[names[i] for i in s] for s in ids])["f1"]

Every problem with the input is a one-line :class:`TfllmError` naming the file and line.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2
from tokenizers import PreTokenizedString

from tfllm.data.readers import data_paths, jsonl_objects, read_text
from tfllm.data.tokenization import Encoded
from tfllm.errors import TfllmError

SCHEMES = ("iob1", "iob2", "bioes")
PREFIXES = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}
CONLL_EXTENSIONS = (".txt", ".conll", ".iob", ".bio")
DOCSTART = "-DOCSTART-"
IGNORED = -100  # label of pieces that are not a word's first piece, and of [CLS]/[SEP]
COLUMN_SEPARATOR = re.compile(r"[ \t]+")


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class TaggedSentences:
    """Sentences as word lists with one tag per word, and where each sentence starts.

    ``lines[s]`` is the 1-based line where sentence ``s`` starts in ``files[s]``; in a CoNLL file
    (``formats[file] == "conll"``) word ``i`` is on line ``lines[s] + i``, in JSONL all are on it.
    """
    tokens: list[list[str]]
    tags: list[list[str]]
    source: str
    lines: list[int]
    files: Optional[list[str]] = None  # the file of each sentence; ``source`` when None
    formats: dict[str, str] = dataclasses.field(default_factory=dict)  # file -> "conll" / "jsonl"

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, indices) -> "TaggedSentences":
        pick = lambda xs: None if xs is None else [xs[i] for i in indices]  # noqa: E731
        return TaggedSentences(pick(self.tokens), pick(self.tags), self.source, pick(self.lines),
                               pick(self.files), self.formats)

    def where(self, sentence: int, word: int) -> str:
        """``"<file> line N"`` of one word, for error messages."""
        file = self.files[sentence] if self.files is not None else self.source
        step = 1 if self.formats.get(file) == "conll" else 0
        return f"{file} line {self.lines[sentence] + step * word}"


def read_tagged(spec: str, fmt: str = "auto", token_column: int = 0, tag_column: int = -1,
                tokens_key: str = "tokens", tags_key: str = "tags") -> TaggedSentences:
    """Read tagged sentences from CoNLL column files or JSONL (a path, glob or comma list)."""
    parts = []
    for path in data_paths(spec):
        if tagged_format(path, fmt) == "conll":
            parts.append(read_conll(path, token_column, tag_column))
        else:
            parts.append(read_tagged_jsonl(path, tokens_key, tags_key))
    if len(parts) == 1:
        return parts[0]
    return TaggedSentences([t for p in parts for t in p.tokens], [t for p in parts for t in p.tags],
                           spec, [n for p in parts for n in p.lines],
                           [f for p in parts for f in p.files],
                           {k: v for p in parts for k, v in p.formats.items()})


def tagged_format(path: Path, fmt: str = "auto") -> str:
    """``"conll"`` or ``"jsonl"``: given, or told by the file's extension."""
    if fmt in ("conll", "jsonl"):
        return fmt
    if fmt != "auto":
        raise TfllmError(f"unknown tagged-data format {fmt!r}; choose from auto, conll, jsonl")
    if path.suffix.lower() in CONLL_EXTENSIONS:
        return "conll"
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    raise TfllmError(f"{path}: cannot tell the format from the extension "
                     f"({', '.join(CONLL_EXTENSIONS)} are CoNLL, .jsonl is JSONL); set the format")


def read_conll(path: Path, token_column: int = 0, tag_column: int = -1) -> TaggedSentences:
    """CoNLL columns: one word a line, blank lines between sentences, ``-DOCSTART-`` lines skipped."""
    sentences: list[list[tuple[str, str]]] = []
    lines, sentence = [], None  # the (word, tag) list being read; None between sentences
    width, token_at, tag_at = None, None, None
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        columns = COLUMN_SEPARATOR.split(line.strip(" \t\r"))
        if columns == [""] or columns[0] == DOCSTART:
            sentence = None
            continue
        if width is None:
            width = len(columns)
            token_at, tag_at = column_positions(path, number, width, token_column, tag_column)
        if len(columns) != width:
            raise TfllmError(f"{path} line {number}: expected {width} columns (token in column "
                             f"{token_at + 1}, tag in column {tag_at + 1}), found {len(columns)}")
        if sentence is None:
            sentence = []
            sentences.append(sentence)
            lines.append(number)
        sentence.append((columns[token_at], columns[tag_at]))
    if not sentences:
        raise TfllmError(f"{path}: no sentences (expected one 'token ... tag' line per word, "
                         "a blank line between sentences)")
    tokens = [[word for word, _ in sentence] for sentence in sentences]
    tags = [[tag for _, tag in sentence] for sentence in sentences]
    return TaggedSentences(tokens, tags, str(path), lines, [str(path)] * len(tokens), {str(path): "conll"})


def column_positions(path: Path, number: int, width: int, token_column: int,
                     tag_column: int) -> tuple[int, int]:
    """The 0-based token and tag columns in lines of ``width`` columns (negative counts from the end)."""
    positions = []
    for name, column in (("token", token_column), ("tag", tag_column)):
        position = column + width if column < 0 else column
        if not 0 <= position < width:
            raise TfllmError(f"{path} line {number}: found {width} column(s), too few for the "
                             f"{name} in column index {column}")
        positions.append(position)
    if positions[0] == positions[1]:
        raise TfllmError(f"{path} line {number}: found {width} column(s); the token and the tag "
                         f"would be the same column (a word and its tag are needed on each line)")
    return positions[0], positions[1]


def read_tagged_jsonl(path: Path, tokens_key: str = "tokens", tags_key: str = "tags") -> TaggedSentences:
    """JSONL: one ``{"tokens": [...], "tags": [...]}`` object a line."""
    tokens, tags, lines = [], [], []
    for number, row in jsonl_objects(path, read_text(path)):
        words, word_tags = (string_list(path, number, row, key) for key in (tokens_key, tags_key))
        if not words:
            raise TfllmError(f"{path} line {number}: sentence with no tokens")
        if len(words) != len(word_tags):
            raise TfllmError(f"{path} line {number}: {len(words)} {tokens_key} but "
                             f"{len(word_tags)} {tags_key}")
        tokens.append(words)
        tags.append(word_tags)
        lines.append(number)
    if not tokens:
        raise TfllmError(f"{path}: no sentences (expected one JSON object a line with "
                         f"{tokens_key!r} and {tags_key!r} lists)")
    return TaggedSentences(tokens, tags, str(path), lines, [str(path)] * len(tokens), {str(path): "jsonl"})


def string_list(path: Path, number: int, row: dict, key: str) -> list[str]:
    """``row[key]``, which must be a list of strings."""
    if key not in row:
        raise TfllmError(f"{path} line {number}: no key {key!r} (keys: {', '.join(map(str, row))})")
    value = row[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TfllmError(f"{path} line {number}: {key!r} must be a list of strings, "
                         f"found {json.dumps(value)[:80]}")
    return value


# ---------------------------------------------------------------------------------------------
# Tag schemes


def check_scheme(name: str) -> str:
    """``name`` if it is one of :data:`SCHEMES`, else an error with a close match."""
    if name not in SCHEMES:
        close = difflib.get_close_matches(str(name), SCHEMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TfllmError(f"config key data.tag_scheme: {name!r} is not one of {', '.join(SCHEMES)}{hint}")
    return name


def to_iob2(tags: Sequence[str], scheme: str, where: Callable[[int], str]) -> list[str]:
    """One sentence's tags converted from ``scheme`` to IOB2; ``where(i)`` names word i's file and line."""
    convert = {"iob1": iob1_to_iob2, "iob2": check_iob2, "bioes": bioes_to_iob2}[check_scheme(scheme)]
    return convert(tags, where)


def split_tag(tags: Sequence[str], i: int, scheme: str, where) -> tuple[str, Optional[str]]:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", None)``; anything else is an error."""
    prefix, dash, kind = tags[i].partition("-")
    if tags[i] == "O":
        return "O", None
    if not dash or not kind or prefix not in PREFIXES[scheme]:
        raise TfllmError(f"{where(i)}: tag {i + 1} {tags[i]!r} is not 'O' or P-TYPE with P one of "
                         f"{', '.join(PREFIXES[scheme])} (data.tag_scheme={scheme})")
    return prefix, kind


def invalid(tags: Sequence[str], i: int, scheme: str, where, hint: str = "") -> TfllmError:
    after = f"follows {tags[i - 1]!r}" if i else "starts the sentence"
    return TfllmError(f"{where(i)}: tag {i + 1} {tags[i]!r} {after}; not valid {scheme.upper()}{hint}")


def check_iob2(tags: Sequence[str], where) -> list[str]:
    """IOB2: every entity starts with B-X; I-X only after B-X or I-X."""
    previous = None  # entity type of the previous word
    for i in range(len(tags)):
        prefix, kind = split_tag(tags, i, "iob2", where)
        if prefix == "I" and kind != previous:
            raise invalid(tags, i, "iob2", where, " (if the file is IOB1, set data.tag_scheme=iob1)")
        previous = kind
    return list(tags)


def iob1_to_iob2(tags: Sequence[str], where) -> list[str]:
    """IOB1: I-X may start an entity; B-X only starts one right after another X entity."""
    converted, previous = [], None
    for i in range(len(tags)):
        prefix, kind = split_tag(tags, i, "iob1", where)
        if prefix == "B" and kind != previous:
            raise invalid(tags, i, "iob1", where, f" (B-{kind} only separates two adjacent {kind} entities)")
        if prefix == "I" and kind != previous:
            prefix = "B"
        converted.append("O" if kind is None else f"{prefix}-{kind}")
        previous = kind
    return converted


def bioes_to_iob2(tags: Sequence[str], where) -> list[str]:
    """BIOES: S-X alone, or B-X (I-X)* E-X."""
    converted, open_kind = [], None  # type of the entity still waiting for its E- tag
    for i in range(len(tags)):
        prefix, kind = split_tag(tags, i, "bioes", where)
        expected = ("I", "E") if open_kind else ("O", "B", "S")
        if prefix not in expected or (open_kind and kind != open_kind):
            raise invalid(tags, i, "bioes", where)
        open_kind = kind if prefix in ("B", "I") else None
        converted.append("O" if kind is None else f"{'B' if prefix in ('B', 'S') else 'I'}-{kind}")
    if open_kind:
        last = len(tags) - 1
        raise TfllmError(f"{where(last)}: tag {last + 1} {tags[last]!r} ends the sentence; "
                         f"a BIOES {open_kind} entity must end with E-{open_kind}")
    return converted


def convert_sentences(sentences: TaggedSentences, scheme: str) -> TaggedSentences:
    """The same sentences with their tags converted to (and checked as) IOB2."""
    tags = [to_iob2(t, scheme, lambda i, s=s: sentences.where(s, i)) for s, t in enumerate(sentences.tags)]
    return dataclasses.replace(sentences, tags=tags)


def tag_names(iob2_tag_lists: Sequence[Sequence[str]]) -> list[str]:
    """The label list: ``O``, then ``B-T``, ``I-T`` for each entity type T in sorted order."""
    kinds = sorted({tag[2:] for tags in iob2_tag_lists for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")]


def tags_to_ids(sentences: TaggedSentences, names: Sequence[str]) -> list[np.ndarray]:
    """Each sentence's tags as int32 ids into ``names``; an unknown tag names its file and line."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for s, tags in enumerate(sentences.tags):
        for i, tag in enumerate(tags):
            if tag not in index:
                raise TfllmError(f"{sentences.where(s, i)}: tag {tag!r} was never seen in training "
                                 f"(known tags: {', '.join(names[:20])})")
        ids.append(np.array([index[tag] for tag in tags], dtype=np.int32))
    return ids


# ---------------------------------------------------------------------------------------------
# Word-piece windows


@dataclass
class TaggedWindows:
    """Sentences cut into word-piece windows of at most ``max_length`` pieces ([CLS] ... [SEP]).

    ``encoded.labels[k]`` holds the tag id on the first piece of each word and -100 elsewhere.
    ``word_ids[k][p]`` is the sentence word of piece p (-1 for [CLS]/[SEP]); ``context[k][p]`` is
    True where window k is the one whose prediction counts for that word.
    """
    encoded: Encoded
    sentence: np.ndarray
    word_ids: list[np.ndarray]
    context: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.sentence)


def check_stride(tokenizer, max_length: int, stride: int) -> None:
    room = max_length - tokenizer.num_special_tokens_to_add()
    if not 0 <= stride < room:
        raise TfllmError(f"config key data.stride: {stride} must be at least 0 and less than "
                         f"data.max_length - {max_length - room} = {room}")


def encode_tagged(tokenizer, tokens_lists: Sequence[Sequence[str]],
                  tag_ids_lists: Optional[Sequence[Sequence[int]]], max_length: int,
                  stride: int) -> TaggedWindows:
    """Word-piece windows of every sentence; consecutive windows of a sentence share ``stride`` pieces.

    ``tag_ids_lists`` is None when predicting (then ``encoded.labels`` is None).
    """
    check_stride(tokenizer, max_length, stride)
    if not tokens_lists:  # the tokenizer would read [] as one empty sentence
        no_labels = None if tag_ids_lists is None else []
        return TaggedWindows(Encoded([], [], no_labels), np.zeros(0, dtype=np.int64), [], [])
    batch = tokenizer([list(words) for words in tokens_lists], is_split_into_words=True,
                      truncation=True, max_length=max_length, stride=stride,
                      return_overflowing_tokens=True, return_attention_mask=False)
    sentence = np.asarray(batch["overflow_to_sample_mapping"], dtype=np.int64)
    word_ids = [np.array([-1 if w is None else w for w in batch.word_ids(k)], dtype=np.int64)
                for k in range(len(sentence))]
    first_pieces, context = [], []
    for windows in windows_by_sentence(sentence):
        ids = [word_ids[k] for k in windows]
        firsts = first_piece_masks(ids, stride)
        first_pieces += firsts
        context += ownership_masks(ids, firsts)
    labels = None
    if tag_ids_lists is not None:
        labels = [piece_labels(word_ids[k], first_pieces[k], tag_ids_lists[s])
                  for k, s in enumerate(sentence)]
    input_ids = [np.asarray(ids, dtype=np.int32) for ids in batch["input_ids"]]
    encoded = Encoded(input_ids, [np.zeros_like(ids) for ids in input_ids], labels)
    return TaggedWindows(encoded, sentence, word_ids, context)


def windows_by_sentence(sentence: np.ndarray) -> list[list[int]]:
    """Window indices grouped by sentence (a sentence's windows are consecutive)."""
    starts = np.flatnonzero(np.diff(sentence, prepend=-1))
    ends = list(starts[1:]) + [len(sentence)]
    return [list(range(start, end)) for start, end in zip(starts, ends)]


def first_piece_masks(window_word_ids: list[np.ndarray], stride: int) -> list[np.ndarray]:
    """For one sentence's windows: True on pieces that are the first piece of their word.

    A window may start in the middle of a word; the piece before its start is the one ``stride``
    pieces before the end of the previous window (consecutive windows share ``stride`` pieces).
    """
    masks, before = [], -1  # word of the piece before the window's first piece
    for ids in window_word_ids:
        content = np.flatnonzero(ids >= 0)
        words = ids[content]
        mask = np.zeros(len(ids), dtype=bool)
        mask[content] = words != np.concatenate([[before], words[:-1]])
        masks.append(mask)
        if len(words) > stride:  # the next window starts `stride` pieces before this one ends
            before = words[len(words) - stride - 1]
    return masks


def ownership_masks(window_word_ids: list[np.ndarray], first_pieces: list[np.ndarray]) -> list[np.ndarray]:
    """For one sentence's windows: True on the pieces of each word in the window that owns it.

    Of the windows holding the word's first piece, the owner is the one where the word is farthest
    (in pieces) from the nearer window edge; the sentence's own start and end are no edges, as
    nothing is cut off there. Ties go to the earlier window.
    """
    last = len(window_word_ids) - 1
    best: dict[int, tuple[float, int]] = {}  # word -> (context, window)
    for k, ids in enumerate(window_word_ids):
        content = np.flatnonzero(ids >= 0)
        for p in np.flatnonzero(first_pieces[k]):
            word = ids[p]
            word_end = np.flatnonzero(ids == word)[-1]
            left = p - content[0] if k > 0 else math.inf
            right = content[-1] - word_end if k < last else math.inf
            if word not in best or min(left, right) > best[word][0]:
                best[word] = (min(left, right), k)
    masks = [np.zeros(len(ids), dtype=bool) for ids in window_word_ids]
    for word, (_, k) in best.items():
        masks[k] |= window_word_ids[k] == word
    return masks


def piece_labels(word_ids: np.ndarray, first_pieces: np.ndarray, tag_ids: Sequence[int]) -> np.ndarray:
    """One window's labels: the word's tag id on its first piece, -100 elsewhere."""
    labels = np.full(len(word_ids), IGNORED, dtype=np.int32)
    labels[first_pieces] = np.asarray(tag_ids, dtype=np.int32)[word_ids[first_pieces]]
    return labels


def merge_predictions(windows: TaggedWindows, per_piece_label_ids, sentence_lengths: Sequence[int],
                      outside_id: int = 0) -> list[list[int]]:
    """Per-word label ids of each sentence, from per-piece ids (``[window][piece]``, padding ignored).

    A word's id is read at its first piece in the window that owns it; a word with no pieces
    (e.g. a control character) gets ``outside_id`` (``O`` is id 0 in :func:`tag_names`).
    """
    merged = [[outside_id] * n for n in sentence_lengths]
    for k, s in enumerate(windows.sentence):
        ids, owned = windows.word_ids[k], windows.context[k]
        for p in np.flatnonzero(owned):
            if ids[p - 1] != ids[p]:  # the word's first piece here (piece 0 is [CLS])
                merged[s][ids[p]] = int(per_piece_label_ids[k][p])
    return merged


# ---------------------------------------------------------------------------------------------
# Entities


def spans(iob2_tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(type, first word, end word exclusive)`` of each entity; a stray I-X (not after B-X/I-X)
    starts nothing, as in seqeval's strict mode."""
    found, start, kind = [], None, None
    for i, tag in enumerate(list(iob2_tags) + ["O"]):
        prefix, tag_kind = tag[:1], tag[2:]
        if start is not None and not (prefix == "I" and tag_kind == kind):
            found.append((kind, start, i))
            start = None
        if prefix == "B":
            start, kind = i, tag_kind
    return found


def words_with_offsets(tokenizer, text: str) -> list[tuple[str, tuple[int, int]]]:
    """The words of a raw text as the tokenizer splits it (its normalizer, then its pre-tokenizer:
    whitespace and punctuation for BERT), each with its ``(start, end)`` characters in ``text``.

    Characters the normalizer deletes (control characters) belong to no word.
    """
    backend = tokenizer.backend_tokenizer
    pieces = PreTokenizedString(text)
    if backend.normalizer is not None:
        pieces.normalize(backend.normalizer.normalize)
    if backend.pre_tokenizer is not None:
        backend.pre_tokenizer.pre_tokenize(pieces)
    splits = pieces.get_splits(offset_referential="original", offset_type="char")
    return [(text[start:end], (start, end)) for _, (start, end), _ in splits if end > start]


def entities(text: str, words_offsets: Sequence[tuple[str, tuple[int, int]]],
             iob2_tags: Sequence[str]) -> list[dict]:
    """Entities of a raw text: ``{"entity", "text", "start", "end"}`` with character offsets."""
    found = []
    for kind, first, end in spans(iob2_tags):
        start, stop = words_offsets[first][1][0], words_offsets[end - 1][1][1]
        found.append({"entity": kind, "text": text[start:stop], "start": start, "end": stop})
    return found


# ---------------------------------------------------------------------------------------------
# Metrics


def entity_metrics(true_tag_lists: Sequence[Sequence[str]],
                   pred_tag_lists: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision / recall / F1 (seqeval strict IOB2, micro), per type, and token accuracy."""
    true, pred = [list(t) for t in true_tag_lists], [list(p) for p in pred_tag_lists]
    tokens = sum(len(t) for t in true)
    correct = sum(t == p for ts, ps in zip(true, pred) for t, p in zip(ts, ps))
    metrics = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {},
               "report": "no entities in the true or the predicted tags\n",
               "token_accuracy": correct / tokens if tokens else 0.0}
    if not any(spans(tags) for tags in true + pred):
        return metrics  # seqeval cannot report on no entities
    options = dict(mode="strict", scheme=IOB2, zero_division=0)
    scores = classification_report(true, pred, output_dict=True, **options)
    metrics["per_type"] = {kind: {"precision": float(s["precision"]), "recall": float(s["recall"]),
                                  "f1": float(s["f1-score"]), "support": int(s["support"])}
                           for kind, s in scores.items() if not kind.endswith(" avg")}
    micro = scores["micro avg"]
    metrics.update(precision=float(micro["precision"]), recall=float(micro["recall"]),
                   f1=float(micro["f1-score"]),
                   report=classification_report(true, pred, digits=4, **options))
    return metrics
