"""Post-training quantisation inputs: the representative data set for full-integer TFLite models.

The TFLite converter calibrates every activation range of an int8 model on a few hundred real
inputs. They are drawn (seeded) from the run's own training data, tokenized with the run's
tokenizer exactly as the exported model will see them at inference: batch 1, no padding.

    >>> samples = calibration_features(run_dir, cfg, tokenizer, n=200)
    >>> converter.representative_dataset = lambda: iter(samples)
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from tfllm.data.readers import read_examples
from tfllm.errors import TfllmError

log = logging.getLogger("tfllm")


def calibration_texts(cfg, n: int, data_file: Optional[str] = None, seed: int = 0):
    """``(texts, pairs)``: ``n`` seeded examples of ``data_file`` or the run's training data."""
    if n < 1:
        raise TfllmError(f"config key compression.int8.calibration_examples: must be at least 1, got {n}")
    data = cfg.data
    source = data_file or data.train_file
    if data_file is None and data.hf_dataset:
        raise TfllmError(f"int8 export needs calibration data: the run trained on the Hugging Face "
                         f"dataset {data.hf_dataset}; pass --calibration-data FILE")
    if not source:
        raise TfllmError("int8 export needs calibration data: the run has no data.train_file; "
                         "pass --calibration-data FILE")
    try:
        examples = read_examples(source, data.text_column, data.text_pair_column, data.label_column,
                                 data.format, data.has_header, data.column_names, require_labels=False)
    except TfllmError as e:
        raise TfllmError(f"int8 export needs calibration data and cannot read it ({e}); "
                         "pass --calibration-data FILE") from None
    if len(examples) == 0:
        raise TfllmError(f"int8 export needs calibration data: {source} has no examples")
    pick = np.sort(np.random.default_rng(seed).choice(len(examples), size=min(n, len(examples)),
                                                      replace=False))
    texts = [examples.texts[i] for i in pick]
    pairs = [examples.pairs[i] for i in pick] if examples.pairs is not None else None
    return texts, pairs


def encode_one(tokenizer, text: str, pair: Optional[str], max_length: int) -> dict:
    """One example as the exported TFLite model takes it: int32 ``[1, length]`` arrays."""
    enc = tokenizer(text, pair, truncation=True, max_length=max_length, return_token_type_ids=True,
                    return_attention_mask=True)
    return {name: np.asarray([enc[name]], dtype=np.int32)
            for name in ("input_ids", "attention_mask", "token_type_ids")}


def calibration_features(cfg, tokenizer, n: int, data_file: Optional[str] = None) -> list[dict]:
    """Representative inputs (dicts of int32 arrays, batch 1) for ``converter.representative_dataset``."""
    texts, pairs = calibration_texts(cfg, n, data_file)
    log.info("int8 calibration on %d examples from %s", len(texts), data_file or cfg.data.train_file)
    return [encode_one(tokenizer, t, pairs[i] if pairs else None, cfg.data.max_length)
            for i, t in enumerate(texts)]


__all__ = ["calibration_features", "calibration_texts", "encode_one"]
