"""Multi-label data: label sets per example (several labels per text) -> multi-hot targets.

A label cell is a JSON list (``["joy", "love"]``, ``[3, 27]``) or a separator-joined string
(``"joy,love"``, GoEmotions' ``"4,27"``). Every problem is a one-line :class:`TfllmError` naming
the source and the 1-based row.

    >>> sets = parse_label_sets(['["joy", "love"]', "anger", "joy , anger"], "train.tsv")
    >>> names = label_names_from_sets(sets)          # ['anger', 'joy', 'love']
    >>> multi_hot(sets, names, "train.tsv")          # float32 [3, 3]
    >>> go = names_from_file("../shared/data/goemotions/labels.txt")
    >>> ids_to_names([["4", "27"]], go, "dev.tsv")   # [['approval', 'neutral']]
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfllm.data.labels import LabelMap
from tfllm.data.readers import read_text
from tfllm.errors import TfllmError

KNOWN_SHOWN = 20  # how many known labels an "unknown label" error lists


def parse_label_sets(values: Sequence, source: str, separator: str = ",",
                     column: str = "label") -> list[list[str]]:
    """Each raw label cell as a list of label strings: stripped, duplicates dropped (first kept)."""
    return [_parse_cell(value, f"{source} row {row}", separator, column)
            for row, value in enumerate(values, start=1)]


def _parse_cell(value, where: str, separator: str, column: str) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            items = _json_list(text, where, column)
        elif text:
            items = text.split(separator)
        else:
            items = []
    elif isinstance(value, (list, tuple, np.ndarray)):  # JSON/parquet cells arrive as lists/arrays
        items = list(value)
    elif _is_missing(value):
        items = []
    elif _is_integer(value):
        items = [value]
    else:
        raise TfllmError(f"{where}: label cell {value!r} in column {column!r} is not a list or a "
                         "string of labels")
    labels = _unique([_item_text(item, where, column) for item in items])
    if not labels:
        raise TfllmError(f"{where}: empty label set in column {column!r}; every example needs at "
                         "least one label")
    return labels


def _json_list(text: str, where: str, column: str) -> list:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise TfllmError(f"{where}: malformed JSON list in column {column!r} ({e.msg}): "
                         f"{text[:60]!r}") from None
    if not isinstance(items, list):
        raise TfllmError(f"{where}: column {column!r} holds {text[:60]!r}, not a JSON list")
    return items


def _item_text(item, where: str, column: str) -> str:
    if _is_integer(item):
        return str(int(item))
    if not isinstance(item, str):
        raise TfllmError(f"{where}: label {item!r} in column {column!r} is not a string or an "
                         "integer")
    text = item.strip()
    if not text:
        raise TfllmError(f"{where}: empty label in column {column!r} (a doubled or trailing "
                         "separator?)")
    return text


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def names_from_file(path) -> list[str]:
    """Label names, one per line (GoEmotions' ``labels.txt``); trailing blank lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise TfllmError(f"label names file not found: {path}")
    lines = [line.strip() for line in read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise TfllmError(f"{path}: no label names (expected one name per line)")
    first_seen: dict[str, int] = {}
    for number, name in enumerate(lines, start=1):
        if not name:
            raise TfllmError(f"{path} line {number}: blank label name")
        if name in first_seen:
            raise TfllmError(f"{path} line {number}: label name {name!r} already on line "
                             f"{first_seen[name]}")
        first_seen[name] = number
    return lines


def ids_to_names(label_sets: Sequence[Sequence[str]], names: Sequence[str],
                 source: str) -> list[list[str]]:
    """Integer ids (``"4"``) into ``names`` replaced by the names they index."""
    valid = f"0-{len(names) - 1}" if names else "none: the label names are empty"
    return [_unique([_name_of(label, names, f"{source} row {row}", valid) for label in labels])
            for row, labels in enumerate(label_sets, start=1)]


def _name_of(label, names: Sequence[str], where: str, valid: str) -> str:
    try:
        index = int(str(label).strip())
    except ValueError:
        raise TfllmError(f"{where}: label {label!r} is not an integer id into the label names "
                         f"(valid ids: {valid})") from None
    if not 0 <= index < len(names):
        raise TfllmError(f"{where}: label id {index} is out of range (valid ids: {valid}, "
                         f"{len(names)} label names)")
    return names[index]


def multi_hot(label_sets: Sequence[Sequence[str]], names: Sequence[str], source: str,
              unknown: str = "was never seen in training") -> np.ndarray:
    """Float32 ``[examples, len(names)]`` with 1.0 where the example carries that label."""
    index = {name: i for i, name in enumerate(names)}
    targets = np.zeros((len(label_sets), len(names)), dtype=np.float32)
    for row, labels in enumerate(label_sets):
        for label in labels:
            if label not in index:
                raise TfllmError(f"{source} row {row + 1}: label {label!r} {unknown} "
                                 f"(known labels: {', '.join(list(names)[:KNOWN_SHOWN])})")
            targets[row, index[label]] = 1.0
    return targets


def label_names_from_sets(label_sets: Sequence[Sequence[str]],
                          given: Optional[Sequence[str]] = None) -> list[str]:
    """``given`` (checked for duplicates), else every label in the sets sorted (numerically when
    all are integers)."""
    every = [label for labels in label_sets for label in labels]
    return list(LabelMap.from_labels(every, given).names)
