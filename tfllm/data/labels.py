"""The label map: class names <-> ids, fixed by training data and saved with each run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfllm.data.readers import read_json
from tfllm.errors import TfllmError


@dataclass(frozen=True)
class LabelMap:
    names: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: Sequence[str], names: Optional[Sequence[str]] = None) -> "LabelMap":
        """Classes in the given order, else sorted (numerically when every label is an integer)."""
        if names:
            names = tuple(str(n) for n in names)
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise TfllmError(f"config key data.label_names: {', '.join(map(repr, duplicates))} "
                                 "listed more than once")
            return cls(names)
        unique = set(labels)
        if not unique:
            raise TfllmError("no labels in the training data")
        key = int if all(_is_int(x) for x in unique) else str
        return cls(tuple(sorted(unique, key=key)))

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, labels: Sequence[str], source: str,
               unknown: str = "was never seen in training") -> np.ndarray:
        index = {name: i for i, name in enumerate(self.names)}
        ids = np.empty(len(labels), dtype=np.int32)
        for row, label in enumerate(labels):
            if label not in index:
                raise TfllmError(f"{source} row {row + 1}: label {label!r} {unknown} "
                                 f"(known labels: {', '.join(self.names[:20])})")
            ids[row] = index[label]
        return ids

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"labels": list(self.names)}, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "LabelMap":
        """The map saved with a run; a missing, malformed or duplicated label list names the file."""
        if not path.is_file():
            raise TfllmError(f"label map not found: {path}")
        data = read_json(path)
        names = data.get("labels") if isinstance(data, dict) else None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise TfllmError(f'{path}: expected {{"labels": ["name", ...]}} with at least one label')
        if len(set(names)) != len(names):
            raise TfllmError(f"{path}: a label is listed more than once")
        return cls(tuple(names))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False
