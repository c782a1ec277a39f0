"""How tfllm runs a bfloat16 model: float32 where that is faster on a CPU or more exact.

Under ``mixed_bfloat16`` every op of Hugging Face's BERT runs in bfloat16. TensorFlow's CPU
matrix products use oneDNN's bfloat16 instructions, but its bfloat16 ``Erfc`` (the exact GELU
of the 1536-wide intermediate activations) is slow: in a MiniLM fine-tuning step on an
AVX512-BF16 EPYC it took 21 ms for 6 calls, 5 ms once computed in float32
(``benchmarks/profile_train.py --precision bf16``). :func:`gelu_in_float32` makes the GELU cast
its input to float32, compute, and cast back: the same function, rounded once instead of at
every op. A float32 model is left exactly as it was (the activation computes as before when its
input is float32).

    >>> bert = gelu_in_float32(TFBertForSequenceClassification(config))

Keras' dropout is biased in bfloat16: it draws its uniform numbers in the input's dtype (128
distinct values in [0, 1)) and scales by ``1 / (1 - rate)`` rounded to bfloat16, so at rate 0.1
it drops 10.16% and scales by 1.109375: a kept-and-scaled activation averages 0.9968 of its
input instead of 1, at each of BERT's 20 dropouts, in training only. :func:`unbiased_dropout`
swaps in :class:`UnbiasedDropout`, whose expectation is the input's within 1e-5 (and whose masks
cost half the random bits); float32 models keep Keras' own dropout. TensorFlow's bfloat16
``BiasAddGrad`` sums in bfloat16 too, so every Dense bias gradient of a bf16 step was 2-4% off;
:func:`float32_bias_gradients` makes Dense layers (and the masked-LM output layer) add their
bias so that its gradient is summed in float32. :func:`float32_residual_stream` keeps the sum that
runs through the encoder (each block's output plus its input, then LayerNorm) in float32 instead of
rounding it to bfloat16 twice a layer; the matrix products stay bfloat16.

:func:`keras_policy` builds a model under a mixed-precision policy without leaking it into the
models the process builds afterwards. :func:`bfloat16_weights_for_inference` makes a loaded
bfloat16 model multiply by weights cast once rather than on every call.
"""
from __future__ import annotations

import contextlib

import tensorflow as tf
import tf_keras
from transformers.models.bert.modeling_tf_bert import (TFBertLMPredictionHead, TFBertOutput,
                                                       TFBertSelfOutput)

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


class UnbiasedDropout(tf_keras.layers.Dropout):
    """Keras' ``Dropout`` whose output has its input's expectation in bfloat16 and float16 too.

    The scale ``s = 1 / (1 - rate)`` is rounded to the input's dtype first (1.109375 in bfloat16
    for rate 0.1), then each element is kept with probability ``round(65536 / s) / 65536``, so
    ``P(keep) * s = 1`` within 1e-5; the mask compares 16-bit halves of random int32s with that
    threshold (one 32-bit draw per two elements). float32 inputs take Keras' own path unchanged.

        >>> layer = UnbiasedDropout(0.1)
        >>> y = layer(tf.ones([4096, 384], tf.bfloat16), training=True)  # mean 1.000, not 0.9968
    """

    def call(self, inputs, training=None):
        if inputs.dtype == tf.float32 or self.rate == 0:
            return super().call(inputs, training=training)
        if training is None:
            training = tf_keras.backend.learning_phase()
        return tf.__internal__.smart_cond.smart_cond(
            training, lambda: self.dropped(inputs), lambda: tf.identity(inputs))

    def dropped(self, inputs):
        scale = inputs.dtype.as_numpy_dtype(1.0 / (1.0 - self.rate))  # what the dtype can hold
        threshold = round(65536 / float(scale)) - 32768  # signed 16-bit: P(half < threshold) = P(keep)
        if threshold > 32767:  # a rate so small that its scale rounds to 1: every element is kept
            return tf.identity(inputs)
        shape = self._get_noise_shape(inputs)
        shape = tf.shape(inputs) if shape is None else shape
        count = tf.reduce_prod(shape)
        bits = self._random_generator.random_uniform([(count + 1) // 2], minval=-2 ** 31, maxval=2 ** 31 - 1,
                                                     dtype=tf.int32)
        halves = tf.reshape(tf.bitcast(bits, tf.int16), [-1])[:count]
        keep = tf.reshape(halves < threshold, shape)
        return tf.where(keep, inputs * tf.constant(scale, inputs.dtype), tf.zeros([], inputs.dtype))


class Float32BiasGradientDense(tf_keras.layers.Dense):
    """Keras' ``Dense`` whose bias gradient is summed in float32 when it computes in bfloat16 or
    float16; same outputs, bit for bit.

    Keras adds the bias with ``tf.nn.bias_add``, whose CPU gradient ``BiasAddGrad`` accumulates a
    bfloat16 ``dy`` in bfloat16: 2.2% error over 545 rows, 4.2% over 2,000, 8% on a [4, 500, 8]
    test layer. A plain broadcast add has the same output and a ``Sum`` for its gradient, which
    accumulates in float32 (0.1-0.2%); it ran at the same speed (a custom gradient casting to
    float32 cost 7% of a bf16 step: it keeps oneDNN from fusing the matmul and bias ops). float32
    layers, ragged or sparse inputs and inputs of rank other than 2 or 3 take Keras' own path.
    """

    def call(self, inputs):
        rank = inputs.shape.rank if isinstance(inputs, tf.Tensor) else None
        if not self.use_bias or self.compute_dtype == "float32" or rank not in (2, 3):
            return super().call(inputs)
        inputs = tf.cast(inputs, self.compute_dtype)
        if rank == 2:
            outputs = tf.matmul(inputs, self.kernel)
        else:  # as Keras does: a tensordot over the last axis
            outputs = tf.tensordot(inputs, self.kernel, [[2], [0]])
            outputs.set_shape(inputs.shape[:-1].concatenate([self.kernel.shape[-1]]))
        outputs = outputs + self.bias  # not tf.nn.bias_add: see the class docstring
        return outputs if self.activation is None else self.activation(outputs)


class Float32BiasGradientLMHead(TFBertLMPredictionHead):
    """Hugging Face's masked-LM output layer with its vocabulary bias added as
    :class:`Float32BiasGradientDense` adds its bias (same logits; the gradient sums in float32)."""

    def call(self, hidden_states):
        hidden_states = self.transform(hidden_states=hidden_states)
        length = tf.shape(hidden_states)[1]
        flat = tf.reshape(hidden_states, [-1, self.hidden_size])
        logits = tf.matmul(flat, self.input_embeddings.weight, transpose_b=True)
        return tf.reshape(logits, [-1, length, self.config.vocab_size]) + self.bias


def swap_classes(bert: tf_keras.layers.Layer, swaps: dict) -> list:
    """Give every layer inside ``bert`` whose exact type is a key of ``swaps`` that key's value as
    its class: the same object, weights and config, only its methods differ. Returns the swapped
    layers. Call it before the model is first traced."""
    swapped = []
    for layer in bert.submodules:
        replacement = swaps.get(type(layer))
        if replacement is not None:
            layer.__class__ = replacement
            swapped.append(layer)
    return swapped


def float32_bias_gradients(bert: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
    """Make every Keras ``Dense`` layer inside ``bert`` a :class:`Float32BiasGradientDense` and a
    masked-LM output layer a :class:`Float32BiasGradientLMHead` (:func:`swap_classes`); returns ``bert``."""
    swap_classes(bert, {tf_keras.layers.Dense: Float32BiasGradientDense,
                        TFBertLMPredictionHead: Float32BiasGradientLMHead})
    return bert


def unbiased_dropout(bert: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
    """Make every Keras ``Dropout`` layer inside ``bert`` an :class:`UnbiasedDropout`
    (:func:`swap_classes`); returns ``bert``."""
    swap_classes(bert, {tf_keras.layers.Dropout: UnbiasedDropout})
    return bert


class Float32ResidualAdd:
    """The residual connection of a BERT sub-layer (``LayerNorm(dropout(dense(x)) + residual)``)
    added and normalised in float32, its output left in float32: under bfloat16 the residual stream
    between layers is never rounded to 8 bits of mantissa, as PyTorch's autocast keeps it. The
    matrix products still run in bfloat16 (each Dense casts its float32 input). float32 models
    compute exactly as before (every cast is to the dtype the tensor has)."""

    def call(self, hidden_states, input_tensor, training=False):
        hidden_states = self.dropout(inputs=self.dense(inputs=hidden_states), training=training)
        return self.LayerNorm(inputs=tf.cast(hidden_states, tf.float32) + tf.cast(input_tensor, tf.float32))


class Float32ResidualSelfOutput(Float32ResidualAdd, TFBertSelfOutput):
    """The attention block's output projection with :class:`Float32ResidualAdd`'s residual."""


class Float32ResidualOutput(Float32ResidualAdd, TFBertOutput):
    """The feed-forward block's output projection with :class:`Float32ResidualAdd`'s residual."""


def float32_residual_stream(bert: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
    """Keep the residual stream of ``bert`` in float32 under a bfloat16 or float16 policy: every
    sub-layer's residual add and LayerNorm compute in float32 (:class:`Float32ResidualAdd`) and
    every encoder layer's output is float32; returns ``bert`` (same objects and weights). The
    embeddings stay in the compute dtype (Hugging Face casts the attention mask to theirs). Call
    it before the model is first traced."""
    for layer in swap_classes(bert, {TFBertSelfOutput: Float32ResidualSelfOutput, TFBertOutput: Float32ResidualOutput}):
        layer.LayerNorm._set_dtype_policy("float32")
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
