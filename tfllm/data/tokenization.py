"""WordPiece tokenization with the checkpoint's own fast tokenizer; no padding here (batches pad)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from transformers import BertTokenizerFast

from tfllm.errors import TfllmError


@dataclass
class Encoded:
    """Token ids of a set of examples, one variable-length int32 array per example."""
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    # int32 class ids [n], float targets [n], multi-hot rows [n, L], or per-token int32 arrays
    labels: Optional[np.ndarray | list[np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))


def load_tokenizer(path: str | Path):
    """The fast (Rust) BERT tokenizer saved in a checkpoint or run directory."""
    try:
        return BertTokenizerFast.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise TfllmError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None


def encode_texts(tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                 max_length: int = 128, labels: Optional[np.ndarray] = None) -> Encoded:
    """Tokenize texts (and second texts) with truncation to ``max_length`` tokens."""
    batch = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                      max_length=max_length, return_attention_mask=False, return_token_type_ids=True)
    as_arrays = lambda rows: [np.asarray(r, dtype=np.int32) for r in rows]  # noqa: E731
    return Encoded(as_arrays(batch["input_ids"]), as_arrays(batch["token_type_ids"]), labels)
