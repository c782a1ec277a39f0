"""Masked-LM masking on the fly, in TensorFlow ops (a ``map_fn`` for the tf.data pipeline).

Each batch is masked afresh when it is produced, so every epoch sees different masks:

* each ordinary token is *chosen* with probability ``mlm_probability`` (15% by default);
  special tokens ([CLS], [SEP], [PAD], [UNK], [MASK]) and padding are never chosen;
* a chosen token becomes [MASK] (80%), a random ordinary token (10%) or stays itself (10%);
* ``labels`` hold the original id at chosen positions and :data:`IGNORE` (-100, Hugging Face's
  convention) everywhere else: the loss is computed only where a token was chosen;
* whole-word masking chooses *words* (a WordPiece token plus its ``##`` continuations) with the
  same probability, and applies the 80/10/10 decision to the whole word, so a word is never split.

Randomness is stateless: the seed of a batch is ``(seed, epoch, fingerprint of the batch's
token ids)``. Masks differ from epoch to epoch, even for a batch that comes back unchanged (a
corpus of one batch, or unshuffled data), while a resumed run re-draws exactly the masks of the
interrupted one and a held-out set (always read as epoch 0) gets the same masks at every
evaluation, so its perplexity is comparable over time.

    >>> spec = MaskingSpec.from_tokenizer(tokenizer, mlm_probability=0.15)
    >>> ids, labels = mask_tokens(input_ids, attention_mask, spec, seed=[0, 1])
    >>> map_fn = make_masking_fn(spec, seed=42)          # for SplitData(encoded, plan, map_fn)

The batch transform returns ``(features, y, weights)`` with ``y = labels`` ``[batch, length]``;
with next-sentence prediction ``y`` gets one more column, ``y[:, -1]``, holding the NSP label
(0 = B follows A, 1 = B is random), which the pipeline delivered as the example's label.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfllm.errors import TfllmError

IGNORE = -100  # label of positions that carry no masked-LM target


@dataclass
class MaskingSpec:
    """What masking needs to know about the vocabulary, and the probabilities."""
    vocab_size: int
    mask_token_id: int
    special_ids: Sequence[int]
    mlm_probability: float = 0.15
    mask_fraction: float = 0.8       # of chosen tokens: replaced by [MASK]
    random_fraction: float = 0.1     # ... by a random ordinary token; the rest stay unchanged
    whole_word: bool = False
    continuation: Optional[np.ndarray] = None  # bool [vocab]: token continues a word ("##x")

    def __post_init__(self):
        check_probability(self.mlm_probability)
        if self.whole_word and self.continuation is None:
            raise TfllmError("whole-word masking needs the vocabulary's continuation flags")

    @classmethod
    def from_tokenizer(cls, tokenizer, mlm_probability: float = 0.15, whole_word: bool = False):
        if tokenizer.mask_token_id is None:
            raise TfllmError("the tokenizer has no [MASK] token; masked-LM training needs one")
        vocab = tokenizer.get_vocab()
        size = max(len(tokenizer), max(vocab.values()) + 1)
        continuation = np.zeros(size, dtype=bool)
        for token, i in vocab.items():
            continuation[i] = token.startswith("##")
        return cls(vocab_size=size, mask_token_id=int(tokenizer.mask_token_id),
                   special_ids=sorted(set(int(i) for i in tokenizer.all_special_ids)),
                   mlm_probability=mlm_probability, whole_word=whole_word, continuation=continuation)

    def ordinary_ids(self) -> np.ndarray:
        """Ids a random replacement may take: every id but the special tokens."""
        keep = np.ones(self.vocab_size, dtype=bool)
        keep[[i for i in self.special_ids if i < self.vocab_size]] = False
        return np.flatnonzero(keep).astype(np.int32)


def check_probability(p: float) -> None:
    if not 0.0 < float(p) < 1.0:
        raise TfllmError(f"config key data.mlm_probability: {p} must be between 0 and 1 (exclusive)")


def batch_seed(input_ids, seed: int, epoch=0) -> tf.Tensor:
    """A stateless-RNG seed ``[2]`` from a global seed, the epoch and a fingerprint of the batch's ids."""
    text = tf.strings.reduce_join(tf.strings.as_string(tf.reshape(input_ids, [-1])), separator=",")
    shape = tf.strings.as_string(tf.shape(input_ids))
    fingerprint = tf.strings.to_hash_bucket_fast(
        tf.strings.join([text, tf.strings.reduce_join(shape, separator="x")], separator="|"),
        2 ** 31 - 1)
    epoch = tf.cast(epoch, tf.int64)
    return tf.stack([tf.constant(seed, tf.int64) + epoch * 1_000_003, fingerprint])


def word_starts(input_ids, special, continuation) -> tf.Tensor:
    """True where a word begins. Special tokens are words of their own, and a continuation
    piece right after a special token (a block cut inside a word) starts a word too."""
    is_cont = tf.gather(continuation, input_ids)
    prev_special = tf.pad(special[:, :-1], [[0, 0], [1, 0]], constant_values=True)
    return tf.logical_or(tf.logical_not(is_cont), tf.logical_or(special, prev_special))


def mask_tokens(input_ids, attention_mask, spec: MaskingSpec, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """``(masked_ids, labels)`` for a ``[batch, length]`` int32 batch; see the module docstring."""
    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    attention_mask = tf.convert_to_tensor(attention_mask, tf.int32)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    shape = tf.shape(input_ids)
    seeds = tf.random.experimental.stateless_split(seed, 4)

    special_table = np.zeros(spec.vocab_size, dtype=bool)
    special_table[[i for i in spec.special_ids if i < spec.vocab_size]] = True
    in_vocab = tf.logical_and(input_ids >= 0, input_ids < spec.vocab_size)
    safe_ids = tf.where(in_vocab, input_ids, 0)
    special = tf.logical_or(tf.gather(tf.constant(special_table), safe_ids), tf.logical_not(in_vocab))
    special = tf.logical_or(special, attention_mask == 0)  # padding is never chosen

    if spec.whole_word:
        starts = word_starts(safe_ids, special, tf.constant(spec.continuation))
        word = tf.math.cumsum(tf.cast(starts, tf.int32), axis=1) - 1  # word index within its row
        per_word = lambda s: tf.gather(tf.random.stateless_uniform(shape, s), word, batch_dims=1)  # noqa
        choose_u, kind_u = per_word(seeds[0]), per_word(seeds[1])
    else:
        choose_u = tf.random.stateless_uniform(shape, seeds[0])
        kind_u = tf.random.stateless_uniform(shape, seeds[1])
    chosen = tf.logical_and(choose_u < spec.mlm_probability, tf.logical_not(special))

    to_mask = tf.logical_and(chosen, kind_u < spec.mask_fraction)
    to_random = tf.logical_and(chosen, tf.logical_and(kind_u >= spec.mask_fraction,
                                                      kind_u < spec.mask_fraction + spec.random_fraction))
    ordinary = tf.constant(spec.ordinary_ids())
    pick = tf.random.stateless_uniform(shape, seeds[2], minval=0, maxval=tf.size(ordinary), dtype=tf.int32)
    random_ids = tf.gather(ordinary, pick)

    masked = tf.where(to_mask, tf.constant(spec.mask_token_id, tf.int32), input_ids)
    masked = tf.where(to_random, random_ids, masked)
    labels = tf.where(chosen, input_ids, tf.constant(IGNORE, tf.int32))
    return masked, labels


def make_masking_fn(spec: MaskingSpec, seed: int, nsp: bool = False):
    """The pipeline's ``map_fn``: ``(features, labels, weights) -> (masked features, y, weights)``.

    ``labels`` from the pipeline are the examples' NSP labels when ``nsp`` (else ignored).
    """

    def map_fn(features, labels, weights, epoch=0):
        ids = features["input_ids"]
        masked, mlm_labels = mask_tokens(ids, features["attention_mask"], spec,
                                         batch_seed(ids, seed, epoch))
        features = dict(features, input_ids=masked)
        y = tf.concat([mlm_labels, tf.cast(labels, tf.int32)[:, None]], axis=1) if nsp else mlm_labels
        return features, y, weights

    return map_fn
