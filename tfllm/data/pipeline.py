"""Batches for tf.data: length bucketing, padding to each batch's longest sequence, replica slices.

The batch plan (which examples form which batch, in which order) is computed in numpy from
``(seed, epoch)``, so any step of any epoch can be reproduced exactly: that is what makes
``--resume`` continue with the same data order. Short texts dominate real corpora (SST-2's median
is ~13 tokens), so padding to the batch's longest instead of ``max_length`` saves most of the work.

    >>> plan = BatchPlan(encoded.lengths, batch_size=32, seed=0)
    >>> ds = make_dataset(encoded, plan, num_replicas=1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from tfllm.data.tokenization import Encoded


@dataclass
class BatchPlan:
    """Deterministic batch order: per epoch a seeded shuffle, then length-sorting within windows."""
    lengths: np.ndarray
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    bucketing: bool = True
    window: int = 64  # batches per sorting window: larger = less padding, less randomness

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """The example indices of every batch of one epoch."""
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucketing:
            span = self.window * self.batch_size if self.shuffle else n
            chunks = [order[i:i + span] for i in range(0, n, span)]
            order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.bucketing and self.shuffle:  # otherwise every epoch would go short -> long
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def iterate(self, start_step: int = 0, epochs: Optional[int] = None) -> Iterator[np.ndarray]:
        """Batches from global step ``start_step`` on, across epochs (forever if epochs is None)."""
        for _, batch in self.numbered(start_step, epochs):
            yield batch

    def numbered(self, start_step: int = 0, epochs: Optional[int] = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(epoch, batch)`` pairs, as :meth:`iterate`."""
        epoch, skip = divmod(start_step, self.steps_per_epoch)
        while epochs is None or epoch < epochs:
            for batch in self.epoch(epoch)[skip:]:
                yield epoch, batch
            epoch, skip = epoch + 1, 0


@dataclass
class SplitData:
    """One split ready for the Trainer: encoded examples plus the batch plan that orders them."""
    encoded: Encoded
    plan: BatchPlan
    map_fn: Optional[Callable] = None  # in-graph batch transform (e.g. MLM masking)


IGNORE = -100  # label of a position that has none (a word's later pieces, [CLS], padding)


def padded_width(longest: int, multiple: int) -> int:
    """The width a batch whose longest sequence has ``longest`` tokens is padded to."""
    return max(multiple, int(math.ceil(longest / multiple) * multiple)) if multiple > 1 else longest


def pad_batch(encoded: Encoded, indices: np.ndarray, multiple: int = 8, global_size: int = 0) -> tuple:
    """``(features, labels, weights)`` for one batch, padded to its longest sequence.

    ``weights`` are ``1 / global_size`` per example, so summing ``loss * weight`` over every
    replica and micro-batch gives the mean loss of the global batch exactly. Per-token labels
    (a list of arrays, token classification) are padded with :data:`IGNORE`.
    """
    longest = max((len(encoded.input_ids[i]) for i in indices), default=1)
    width = padded_width(longest, multiple)
    ids = np.zeros((len(indices), width), dtype=np.int32)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, i in enumerate(indices):
        n = len(encoded.input_ids[i])
        ids[row, :n] = encoded.input_ids[i]
        types[row, :n] = encoded.token_type_ids[i]
        mask[row, :n] = 1
    features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    weights = np.full(len(indices), 1.0 / max(global_size or len(indices), 1), dtype=np.float32)
    return features, batch_labels(encoded, indices, width), weights


def batch_labels(encoded: Encoded, indices: np.ndarray, width: int) -> np.ndarray:
    """The labels of one batch: class ids, floats, multi-hot rows or padded per-token ids."""
    if encoded.labels is None:
        return np.zeros(len(indices), dtype=np.int32)
    if isinstance(encoded.labels, list):  # per-token labels, one array per example
        labels = np.full((len(indices), width), IGNORE, dtype=np.int32)
        for row, i in enumerate(indices):
            labels[row, :len(encoded.labels[i])] = encoded.labels[i]
        return labels
    return encoded.labels[indices]


def feature_spec(encoded: Optional[Encoded] = None) -> tuple:
    """``(features, labels, weights)`` tensor specs for batches of ``encoded``."""
    ids = tf.TensorSpec([None, None], tf.int32)
    labels = encoded.labels if encoded is not None else None
    if isinstance(labels, list):
        label_spec = tf.TensorSpec([None, None], tf.int32)
    elif labels is not None:
        label_spec = tf.TensorSpec([None, *labels.shape[1:]], tf.as_dtype(labels.dtype))
    else:
        label_spec = tf.TensorSpec([None], tf.int32)
    return ({"input_ids": ids, "attention_mask": ids, "token_type_ids": ids}, label_spec,
            tf.TensorSpec([None], tf.float32))


def replica_slices(indices: np.ndarray, num_replicas: int) -> list[np.ndarray]:
    """Split one global batch into near-equal per-replica slices (in replica order)."""
    return np.array_split(indices, num_replicas)


def make_dataset(encoded: Encoded, plan: BatchPlan, num_replicas: int = 1, start_step: int = 0,
                 epochs: Optional[int] = None, pipeline_id: int = 0, num_pipelines: int = 1,
                 multiple: int = 8, map_fn: Optional[Callable] = None) -> tf.data.Dataset:
    """A tf.data pipeline of per-replica batches for one input pipeline (one worker).

    Each global batch from ``plan`` is split into ``num_replicas`` slices; this worker yields the
    slices of its own replicas in order, which is how ``distribute_datasets_from_function``
    hands successive elements to a worker's replicas. ``map_fn(features, labels, weights,
    epoch)`` transforms each batch in-graph (e.g. masked-LM masking, whose masks then differ
    from epoch to epoch even when a batch repeats) and returns the first three.
    """
    local = num_replicas // num_pipelines
    mine = range(pipeline_id * local, (pipeline_id + 1) * local)

    with_epoch = map_fn is not None  # only a batch transform needs to know the epoch

    def generate():
        for epoch, indices in plan.numbered(start_step, epochs):
            if len(indices) < num_replicas:  # too few examples left to give every replica one
                continue
            slices = replica_slices(indices, num_replicas)
            for r in mine:
                batch = pad_batch(encoded, slices[r], multiple, global_size=len(indices))
                yield (*batch, epoch) if with_epoch else batch

    signature = (*feature_spec(encoded), tf.TensorSpec([], tf.int64)) if with_epoch else feature_spec(encoded)
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if with_epoch:
        ds = ds.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def distribute(strategy: tf.distribute.Strategy, encoded: Encoded, plan: BatchPlan,
               start_step: int = 0, epochs: Optional[int] = None, multiple: int = 8,
               map_fn: Optional[Callable] = None):
    """The same pipeline under any strategy: each worker builds its own replicas' slices."""
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(encoded, plan, replicas, start_step, epochs,
                            context.input_pipeline_id, context.num_input_pipelines, multiple, map_fn)

    return strategy.distribute_datasets_from_function(dataset_fn)
