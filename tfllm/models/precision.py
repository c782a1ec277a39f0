"""Where a bfloat16 model computes in float32 instead, because that is faster on a CPU.

Under ``mixed_bfloat16`` every op of Hugging Face's BERT runs in bfloat16. TensorFlow's CPU
matrix products use oneDNN's bfloat16 instructions, but its bfloat16 ``Erfc`` (the exact GELU
of the 1536-wide intermediate activations) is slow: in a MiniLM fine-tuning step on an
AVX512-BF16 EPYC it took 21 ms for 6 calls, 5 ms once computed in float32
(``benchmarks/profile_train.py --precision bf16``). :func:`gelu_in_float32` makes the GELU cast
its input to float32, compute, and cast back: the same function, rounded once instead of at
every op. A float32 model is left exactly as it was (the activation computes as before when its
input is float32).

    >>> bert = gelu_in_float32(TFBertForSequenceClassification(config))

:func:`keras_policy` builds a model under a mixed-precision policy without leaking it into the
models the process builds afterwards.
"""
from __future__ import annotations

import contextlib

import tensorflow as tf
import tf_keras

ACTIVATION_ATTRIBUTES = ("intermediate_act_fn", "transform_act_fn")  # encoder FFN, masked-LM head


def float32_gelu(x):
    """The exact GELU (``tf.nn.gelu``, approximate=False) computed in float32, in ``x``'s dtype."""
    if x.dtype == tf.float32:
        return tf.nn.gelu(x, approximate=False)
    return tf.cast(tf.nn.gelu(tf.cast(x, tf.float32), approximate=False), x.dtype)


def gelu_in_float32(bert: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
    """Swap the exact GELU of every layer of ``bert`` for :func:`float32_gelu`; returns ``bert``.

    Other activations (``gelu_new``, ``relu``...) are left as the checkpoint's config made them.
    Call it before the model is first traced in bfloat16."""
    for layer in bert.submodules:
        for attribute in ACTIVATION_ATTRIBUTES:
            if getattr(layer, attribute, None) is tf_keras.activations.gelu:
                setattr(layer, attribute, float32_gelu)
    return bert


@contextlib.contextmanager
def keras_policy(policy: str):
    """Keras' global mixed-precision policy set to ``policy`` (``float32``, ``mixed_bfloat16``...)
    inside the block (layers take it when they are built), and put back after it."""
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)
