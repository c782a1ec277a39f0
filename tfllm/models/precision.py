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
models the process builds afterwards. :func:`bfloat16_weights_for_inference` makes a loaded
bfloat16 model multiply by weights cast once rather than on every call.
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


def bfloat16_weights_for_inference(model: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
    """Make every built ``mixed_bfloat16`` Dense layer of ``model`` multiply by a bfloat16 copy of
    its kernel and bias made now, instead of casting its float32 variables on every call; returns
    ``model``. For inference only: the copies do not follow later training.

    The outputs are the same bit for bit (a copy is the rounding the per-call cast makes). The
    layers' own variables, ``model.weights`` and what the model saves are untouched: the copies
    are plain attributes Keras does not track. On an AVX512-BF16 EPYC the SST-2 MiniLM ran one
    24-token text in 11.0 instead of 13.2 ms; batches of 16 or 32 texts, where matmuls dominate,
    gained 0-3% (ad hoc, alternated in one process).

        >>> bert = bfloat16_weights_for_inference(load_run(path, policy="mixed_bfloat16").hf_model)
    """
    for layer in model.submodules:
        if not (isinstance(layer, tf_keras.layers.Dense) and layer.built and layer.compute_dtype == "bfloat16"):
            continue
        for name in ("kernel", "bias"):
            weight = getattr(layer, name, None)
            if weight is not None and weight.dtype == tf.float32:
                copy = tf.Variable(tf.cast(weight, tf.bfloat16), trainable=False, name=f"{name}_bfloat16")
                object.__setattr__(layer, name, copy)  # past Keras' attribute tracking
    return model
