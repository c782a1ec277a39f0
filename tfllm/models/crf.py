"""A linear-chain conditional random field (CRF) for tagging, e.g. named entities on top of BERT.

A tag path ``y`` of length ``n`` scores ``s(y) = start[y_0] + sum_t e_t[y_t] + sum_{t>0} A[y_{t-1}, y_t]
+ end[y_{n-1}]`` and ``log p(y | e) = s(y) - log Z`` with ``log Z = logsumexp_y s(y)``, computed by the
forward recursion ``alpha_t[j] = e_t[j] + logsumexp_i(alpha_{t-1}[i] + A[i, j])``; Viterbi decoding
is the same recursion with ``max`` for ``logsumexp`` and backpointers.

    >>> crf = CRF(num_tags=9)
    >>> hidden = bert(ids, attention_mask=attention).last_hidden_state        # [B, L, H]
    >>> words, mask = compact(hidden, first_piece)                           # [B, N, H], [B, N]
    >>> emissions = dense(words)                                             # [B, N, 9]
    >>> loss = -tf.reduce_mean(crf.log_likelihood(emissions, word_tags, mask))
    >>> piece_tags = expand(crf.decode(emissions, mask), first_piece, fill=-1)  # [B, L]

Masks are left-aligned: each row is True for its first ``length`` positions, then False (a hole
in the middle is not supported). Rows of length 0 are allowed: their log-likelihood is 0 and their
decoded path is all 0. The weights and all arithmetic are float32 whatever the global
mixed-precision policy; emissions are cast to float32.

:func:`compact` (``top_k`` + ``gather(batch_dims=1)``) and :func:`expand` (``cumsum`` +
``gather(batch_dims=1)``) convert to TFLite built-in ops at any batch size and length. ``decode``
(two ``tf.scan``: WHILE plus TensorLists) converts to built-ins only with a static batch size, e.g.
batch 1 and any length as tfllm's TFLite export uses; a dynamic batch would need Select TF ops.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras


class CRF(tf_keras.layers.Layer):
    """Linear-chain CRF with ``transitions [T, T]`` (from tag i to tag j), ``start [T]``, ``end [T]``.

    The layer's dtype is always float32 (a ``dtype`` argument is ignored), so under a mixed policy
    its weights are plain float32 variables. ``call(emissions, mask=None)`` is :meth:`decode`.

    ``lr_multiplier`` k stores each weight divided by k and multiplies it back when used: under
    Adam, whose steps have about the learning rate's size whatever the gradient's scale, the
    scores then move k times faster than the encoder's weights. BERT-CRF taggers need that: at a
    fine-tuning rate (1e-4) the transitions stay near zero (CoNLL-2003: |A| < 0.04 after 3
    epochs) and the CRF changes nothing. :meth:`scores` gives the effective values.
    """

    def __init__(self, num_tags: int, lr_multiplier: float = 1.0, **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(dtype="float32", **kwargs)
        self.num_tags = int(num_tags)
        self.lr_multiplier = float(lr_multiplier)
        self.transitions = self.add_weight("transitions", shape=(self.num_tags, self.num_tags),
                                           initializer="zeros", dtype=tf.float32)
        self.start = self.add_weight("start", shape=(self.num_tags,), initializer="zeros",
                                     dtype=tf.float32)
        self.end = self.add_weight("end", shape=(self.num_tags,), initializer="zeros",
                                   dtype=tf.float32)
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config["num_tags"] = self.num_tags
        config["lr_multiplier"] = self.lr_multiplier
        return config

    def scores(self) -> dict:
        """The effective ``transitions``, ``start`` and ``end`` scores as NumPy arrays."""
        return {name: self._float(getattr(self, name)).numpy() for name in ("transitions", "start", "end")}

    def call(self, emissions, mask=None):
        return self.decode(emissions, mask)

    def log_likelihood(self, emissions, tags, mask):
        """Per-sequence ``log p(tags | emissions)`` ``[B]`` float32; 0 for rows of length 0."""
        emissions, mask = _prepare(emissions, mask)
        tags = tf.where(mask, tf.cast(tags, tf.int32), 0)        # padding may hold any label
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        score = self._path_score(emissions, tags, mask)
        log_z = self._log_partition(emissions, mask)
        return tf.where(lengths > 0, score - log_z, tf.zeros_like(score))

    def decode(self, emissions, mask=None):
        """Viterbi best paths ``[B, N]`` int32; 0 at padding positions."""
        emissions, mask = _prepare(emissions, mask)
        width = tf.shape(mask)[1]
        emissions, mask = _pad_one_step(emissions, mask)       # scan stacks >= 1 step, even if N == 0
        step = _viterbi_step(self._float(self.transitions), self._float(self.start))
        first = _first_flags(emissions)
        batch = tf.shape(emissions)[0]
        identity = tf.tile(tf.range(self.num_tags)[None], [batch, 1])
        init = (_zeros_state(emissions), identity)
        deltas, backpointers = tf.scan(step, (_time_major(emissions), tf.transpose(mask), first),
                                       initializer=init)
        last = tf.argmax(deltas[-1] + self._float(self.end)[None], axis=-1, output_type=tf.int32)
        _, path = tf.scan(_backtrack_step, backpointers, initializer=(last, last), reverse=True)
        return tf.where(mask, tf.transpose(path), 0)[:, :width]

    def _float(self, variable):
        """A weight's effective value, float32 (even inside another layer's mixed-precision autocast)."""
        return tf.cast(tf.convert_to_tensor(variable), tf.float32) * self.lr_multiplier

    def _path_score(self, emissions, tags, mask):
        """``s(tags)`` ``[B]`` over the unmasked positions."""
        one_hot = tf.one_hot(tags, self.num_tags, dtype=tf.float32)                  # [B, N, T]
        is_first = tf.cast(tf.range(tf.shape(tags)[1]) == 0, tf.float32)[None, :, None]
        next_mask = tf.concat([mask[:, 1:], tf.zeros_like(mask[:, :1])], axis=1)
        is_last = tf.cast(mask & ~next_mask, tf.float32)[..., None]
        unary = emissions + is_first * self._float(self.start) + is_last * self._float(self.end)
        unary = tf.reduce_sum(one_hot * unary, axis=-1)                            # [B, N]
        flat = tf.reshape(self._float(self.transitions), [-1])
        pairs = tf.gather(flat, tags[:, :-1] * self.num_tags + tags[:, 1:])         # [B, N - 1]
        fmask = tf.cast(mask, tf.float32)
        return tf.reduce_sum(unary * fmask, axis=1) + tf.reduce_sum(pairs * fmask[:, 1:], axis=1)

    def _log_partition(self, emissions, mask):
        """``log Z`` ``[B]`` by the forward algorithm (garbage, but finite, for length-0 rows)."""
        step = _forward_step(self._float(self.transitions), self._float(self.start))
        alpha = tf.foldl(step, (_time_major(emissions), tf.transpose(mask), _first_flags(emissions)),
                         initializer=_zeros_state(emissions))
        return tf.reduce_logsumexp(alpha + self._float(self.end)[None], axis=-1)


def _prepare(emissions, mask):
    emissions = tf.cast(emissions, tf.float32)
    if mask is None:
        return emissions, tf.ones(tf.shape(emissions)[:2], tf.bool)
    return emissions, tf.cast(mask, tf.bool)


def _pad_one_step(emissions, mask):
    """Append one masked time step (zeros)."""
    shape = tf.shape(emissions)
    step = tf.zeros(tf.stack([shape[0], 1, shape[2]]), emissions.dtype)
    return (tf.concat([emissions, step], axis=1),
            tf.concat([mask, tf.zeros(tf.stack([shape[0], 1]), tf.bool)], axis=1))


def _time_major(emissions):
    return tf.transpose(emissions, [1, 0, 2])


def _first_flags(emissions):
    """``[N]`` bool: True at time 0 only."""
    return tf.equal(tf.range(tf.shape(emissions)[1]), 0)


def _zeros_state(emissions):
    """``[B, T]`` zeros without indexing time (works for N == 0)."""
    shape = tf.shape(emissions)
    return tf.zeros(tf.stack([shape[0], shape[2]]), tf.float32)


def _forward_step(transitions, start):
    """One step of the forward algorithm; masked rows carry ``alpha`` through."""
    def step(alpha, inputs):
        emit, mask, first = inputs                                     # [B, T], [B], []
        from_prev = tf.reduce_logsumexp(alpha[:, :, None] + transitions[None], axis=1)
        new = tf.where(first, start[None], from_prev) + emit
        return tf.where(mask[:, None], new, alpha)
    return step


def _viterbi_step(transitions, start):
    """One Viterbi step -> (delta, backpointers); identity backpointers where masked or at t=0."""
    def step(carry, inputs):
        delta = carry[0]                                               # carry[1]: last backpointers
        emit, mask, first = inputs
        scores = delta[:, :, None] + transitions[None]                 # [B, from, to]
        new = tf.where(first, start[None], tf.reduce_max(scores, axis=1)) + emit
        best = tf.argmax(scores, axis=1, output_type=tf.int32)
        keep = mask[:, None] & tf.logical_not(first)
        identity = tf.broadcast_to(tf.range(tf.shape(emit)[1])[None], tf.shape(best))
        return tf.where(mask[:, None], new, delta), tf.where(keep, best, identity)
    return step


def _backtrack_step(carry, backpointers):
    """Reverse scan: carry (tag at t-1 after following ``backpointers``, tag at t)."""
    tag = carry[0]
    return tf.gather(backpointers, tag, batch_dims=1), tag


def compact(values, keep):
    """Gather the kept positions of each row to the left.

    ``values [B, L, ...]``, ``keep [B, L]`` bool -> ``packed [B, N, ...]`` (zeros past each row's
    count) and ``mask [B, N]`` bool, with ``N = max(1, most kept in a row)`` (needs ``L >= 1``).
    Uses ``top_k`` on distinct position keys (kept positions first, in order) and
    ``gather(batch_dims=1)``; gradients flow to ``values``.
    """
    keep = tf.cast(keep, tf.bool)
    counts = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    width = tf.maximum(tf.reduce_max(counts), 1)
    length = tf.shape(keep)[1]
    positions = tf.range(length)[None]
    key = tf.where(keep, length - positions, -positions)                       # distinct per row
    _, source = tf.math.top_k(key, k=width, sorted=True)
    mask = tf.range(width)[None] < counts[:, None]
    packed = tf.gather(values, source, batch_dims=1)
    return tf.where(_expand_to(mask, packed), packed, tf.zeros_like(packed)), mask


def expand(packed, keep, fill=0):
    """Scatter ``packed [B, N, ...]`` back to ``[B, L, ...]`` at the kept positions; ``fill`` elsewhere.

    The inverse of :func:`compact`: index ``cumsum(keep) - 1`` and ``gather(batch_dims=1)``.
    """
    keep = tf.cast(keep, tf.bool)
    index = tf.cumsum(tf.cast(keep, tf.int32), axis=1) - 1
    index = tf.clip_by_value(index, 0, tf.maximum(tf.shape(packed)[1] - 1, 0))
    gathered = tf.gather(packed, index, batch_dims=1)
    filler = tf.fill(tf.shape(gathered), tf.cast(fill, gathered.dtype))
    return tf.where(_expand_to(keep, gathered), gathered, filler)


def _expand_to(mask, values):
    """``mask [B, N]`` with trailing unit axes to broadcast against ``values [B, N, ...]``."""
    extra = values.shape.rank - 2
    if not extra:
        return mask
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([extra], tf.int32)], 0))
