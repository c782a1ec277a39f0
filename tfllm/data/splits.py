"""Train / dev / test examples for a task, from files or a Hugging Face dataset, as a config says."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from sklearn.model_selection import train_test_split

from tfllm.config import DataConfig
from tfllm.data.labels import LabelMap
from tfllm.data.readers import Examples, frame_to_examples, read_examples, read_hf_split
from tfllm.errors import TfllmError


@dataclass
class LabelledSplits:
    train: Examples
    dev: Examples
    test: Optional[Examples]
    label_map: LabelMap


def read_splits(cfg: DataConfig, seed: int = 0, stratify: bool = False) -> tuple[Examples, Examples]:
    """Train and dev examples with labels as strings (no label map): a held-out
    ``data.dev_fraction`` of train when there is no dev file, seeded subsets when
    ``data.max_train_examples`` / ``max_dev_examples`` are set."""
    train, dev, _ = _read_sources(cfg)
    if train.labels is None:
        raise TfllmError(f"{train.source}: no labels")
    train = seeded_subset(train, cfg.max_train_examples, seed)
    if dev is None:
        train, dev = stratified_split(train, cfg.dev_fraction, seed) if stratify else \
            random_split(train, cfg.dev_fraction, seed)
    return train, seeded_subset(dev, cfg.max_dev_examples, seed)


def seeded_subset(examples: Examples, size: Optional[int], seed: int) -> Examples:
    """``size`` examples drawn with ``seed`` (in file order), or all of them."""
    if size and len(examples) > size:
        return examples.subset(_sample(len(examples), size, seed))
    return examples


def random_split(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Hold out a seeded ``fraction`` of the examples as dev (no stratification)."""
    if not 0 < fraction < 1:
        raise TfllmError(f"config key data.dev_fraction: {fraction} must be between 0 and 1")
    order = np.random.default_rng(seed).permutation(len(examples))
    size = max(1, int(round(fraction * len(examples))))
    dev = examples.subset(np.sort(order[:size]))
    dev.source = f"{examples.source} (dev split)"
    return examples.subset(np.sort(order[size:])), dev


def load_labelled_splits(cfg: DataConfig, seed: int = 0) -> LabelledSplits:
    """Read train/dev(/test), build the label map from train, check every label is known."""
    train, dev, hf_names = _read_sources(cfg)
    if train.labels is None:
        raise TfllmError(f"{train.source}: no labels")
    # Labels are checked before any subsetting, so the row numbers in errors are the file's rows.
    if cfg.label_names:
        LabelMap.from_labels(train.labels, cfg.label_names).encode(
            train.labels, train.source, unknown="is not in config key data.label_names")
    train = seeded_subset(train, cfg.max_train_examples, seed)
    label_map = LabelMap.from_labels(train.labels, cfg.label_names or hf_names)
    label_map.encode(train.labels, train.source)
    if dev is None:
        train, dev = stratified_split(train, cfg.dev_fraction, seed)
    if dev.labels is not None:
        label_map.encode(dev.labels, dev.source)  # fails on labels unseen in training
    dev = seeded_subset(dev, cfg.max_dev_examples, seed)
    test = _read_file(cfg, cfg.test_file) if cfg.test_file else None
    if test is not None and test.labels is not None:
        label_map.encode(test.labels, test.source)
    return LabelledSplits(train, dev, test, label_map)


def _read_file(cfg: DataConfig, spec: str, require_labels: bool = True) -> Examples:
    return read_examples(spec, cfg.text_column, cfg.text_pair_column, cfg.label_column, cfg.format,
                         cfg.has_header, cfg.column_names, require_labels)


def _read_sources(cfg: DataConfig) -> tuple[Examples, Optional[Examples], Optional[list[str]]]:
    if cfg.hf_dataset:
        frame, names = read_hf_split(cfg.hf_dataset, cfg.hf_train_split, cfg.hf_config, cfg.label_column)
        source = f"{cfg.hf_dataset}[{cfg.hf_train_split}]"
        train = frame_to_examples(frame, source, cfg.text_column, cfg.text_pair_column, cfg.label_column)
        dev = None
        if cfg.hf_dev_split:
            frame, _ = read_hf_split(cfg.hf_dataset, cfg.hf_dev_split, cfg.hf_config, cfg.label_column)
            source = f"{cfg.hf_dataset}[{cfg.hf_dev_split}]"
            dev = frame_to_examples(frame, source, cfg.text_column, cfg.text_pair_column, cfg.label_column)
        return train, dev, names
    if not cfg.train_file:
        raise TfllmError("config key data.train_file: no training data given (or set data.hf_dataset)")
    train = _read_file(cfg, cfg.train_file)
    dev = _read_file(cfg, cfg.dev_file) if cfg.dev_file else None
    return train, dev, None


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def stratified_split(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Hold out ``fraction`` of the examples as dev, keeping class proportions where possible."""
    if not 0 < fraction < 1:
        raise TfllmError(f"config key data.dev_fraction: {fraction} must be between 0 and 1")
    indices = np.arange(len(examples))
    labels = examples.labels
    counts = {label: labels.count(label) for label in set(labels)}
    stratify = labels if min(counts.values()) >= 2 else None
    try:
        train_idx, dev_idx = train_test_split(indices, test_size=fraction, random_state=seed,
                                              stratify=stratify)
    except ValueError as e:
        raise TfllmError(f"{examples.source}: cannot split off a dev set: {e}") from None
    dev = examples.subset(np.sort(dev_idx))
    dev.source = f"{examples.source} (dev split)"
    return examples.subset(np.sort(train_idx)), dev
