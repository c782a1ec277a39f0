"""Quantization-aware training of a Hugging Face TF BERT with TF-MOT's quantize wrappers.

``tfmot.quantization.keras.quantize_model`` accepts only Sequential/Functional models (HF models
are subclassed) and has no registry entry for the attention blocks (model-optimization#812), so
the Dense layers inside the encoder are wrapped one by one, in place:

* every attention Q/K/V/output and feed-forward in/out ``Dense`` of the HF model is replaced by a
  :class:`DenseQuantizeWrapper` (a ``QuantizeWrapperV2``) with :class:`DenseQuantizeConfig`:
  8-bit symmetric fake-quant of the kernel per output channel (``LastValueQuantizer``; TF-MOT's
  default Dense config is per-tensor, which costs ~1 point on SST-2) and 8-bit fake-quant of the
  layer's output; the wrapper also fake-quantises the layer's *input*, since in BERT the Dense
  inputs come from LayerNorm, attention or GELU, which are not quantised layers (an int8 matmul
  needs an input scale). The wrapper computes the Dense as a 1x1 convolution: the converter
  keeps a per-channel kernel only on a CONV_2D (see :class:`DenseQuantizeWrapper`);
* the attention probabilities (softmax output) are fake-quantised to TFLite's fixed int8 softmax
  range (scale 1/256): the converter quantises them that way for the int8 probabilities x values
  matmul, so training sees it too (:class:`ProbsQuantizeDropout` wraps each attention dropout);
* the word-embedding table is fake-quantised (symmetric 8-bit, range = its largest magnitude)
  in training as in export (:func:`fake_quantize_embeddings`), so it ships as int8;
* activation ranges use :class:`EmaRangeQuantizer`: the first training batch sets the range, then
  an exponential moving average follows it. TF-MOT's ``MovingAverageQuantizer`` starts at
  [-6, 6] with decay 0.999, which takes thousands of steps to forget; a short QAT phase would
  otherwise clip BERT's wider activations. The statistics skip padding positions
  (:func:`ranges_over_tokens`), and dropout is off by default (:func:`turn_off_dropout`), so the
  ranges are those the int8 model meets at inference: with both, they match post-training
  calibration's, and the untrained QAT model agrees with FP32 more often than int8 PTQ does;
* :func:`unwrap` puts the plain Dense layers back (``model/`` stays an ordinary transformers
  checkpoint) and returns the learned ranges; :func:`rewrap` re-creates the wrappers on a loaded
  model and restores those ranges, so the exporter can build the fake-quant graph that the
  TFLite converter turns into an int8 model with those ranges (``--quantize qat``).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import numpy as np
import tensorflow as tf
import tf_keras
import tensorflow_model_optimization as tfmot

from tfllm.errors import TfllmError
from tfllm.models.classifier import BertClassifier

log = logging.getLogger("tfllm")

GROUPS = ("attention", "feed_forward")


def _cond(training, true_fn, false_fn):
    if isinstance(training, bool):
        return true_fn() if training else false_fn()
    return tf.cond(tf.cast(training, tf.bool), true_fn, false_fn)


def _quantize(quantizer, inputs, training, variables, **kwargs):
    """A TF-MOT quantizer applied in training or inference mode as ``training`` says."""
    return _cond(training, lambda: quantizer(inputs, True, variables, **kwargs),
                 lambda: quantizer(inputs, False, variables, **kwargs))


@tf_keras.utils.register_keras_serializable("tfllm")
class EmaRangeQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """8-bit asymmetric fake-quant of an activation; range = batch min/max, then an EMA of it.

    ``token_mask`` (``[batch, length]``, 1 for real tokens) keeps padding positions out of the
    statistics: their values never reach the prediction, and in BERT they stretch some ranges
    (and so coarsen the int8 grid) by a third or more.

    Under a ``tf.distribute`` strategy the min/max are those of the global batch (gathered from
    every replica), so each replica assigns the same value; the variables are kept per replica
    (``ON_READ``, like BatchNorm's moving statistics: assigned without another sync point) and
    read from the first replica.
    """

    def __init__(self, decay: float = 0.99, num_bits: int = 8):
        self.decay, self.num_bits = decay, num_bits

    def build(self, tensor_shape, name, layer):
        make = lambda suffix, value, dtype=tf.float32: layer.add_weight(  # noqa: E731
            f"{name}_{suffix}", shape=[], dtype=dtype, trainable=False,
            initializer=tf_keras.initializers.Constant(value),
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        return {"min_var": make("min", -6.0), "max_var": make("max", 6.0),
                "seen": make("seen", 0, tf.int64)}

    def __call__(self, inputs, training, weights, token_mask=None, **kwargs):
        min_var, max_var, seen = weights["min_var"], weights["max_var"], weights["seen"]

        def update():
            values = tf.cast(inputs, tf.float32)
            if token_mask is not None and values.shape.rank == 3:
                # padding -> 0, which every range contains anyway; a classifier's last layer holds
                # the first position only (models/first_token.py), so the mask is cut to fit
                mask = tf.cast(token_mask[:, :tf.shape(values)[1]], tf.bool)
                values = tf.where(mask[:, :, None], values, 0.0)
            low, high = global_min_max(values)
            low, high = tf.minimum(low, 0.0), tf.maximum(high, 0.0)  # the range must contain 0
            first = tf.equal(seen, 0)
            new_low = tf.where(first, low, self.decay * min_var + (1 - self.decay) * low)
            new_high = tf.where(first, high, self.decay * max_var + (1 - self.decay) * high)
            with tf.control_dependencies([min_var.assign(new_low), max_var.assign(new_high),
                                          seen.assign_add(1)]):
                return self._fake_quant(inputs, new_low, new_high)

        return _cond(training, update, lambda: self._fake_quant(inputs, min_var, max_var))

    def _fake_quant(self, inputs, low, high):
        out = tf.quantization.fake_quant_with_min_max_vars(tf.cast(inputs, tf.float32), low, high,
                                                           num_bits=self.num_bits, narrow_range=False)
        return tf.cast(out, inputs.dtype)

    def get_config(self):
        return {"decay": self.decay, "num_bits": self.num_bits}


def global_min_max(values):
    """``(min, max)`` of ``values`` over every replica's batch (just this one's outside a strategy)."""
    low, high = tf.reduce_min(values), tf.reduce_max(values)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return low, high
    gathered = context.all_gather(tf.stack([low, -high])[None], axis=0)  # [replicas, 2]
    least = tf.reduce_min(gathered, axis=0)
    return least[0], -least[1]


@tf_keras.utils.register_keras_serializable("tfllm")
class DenseQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Kernel: 8-bit symmetric per output channel (LastValue); output: 8-bit EMA range."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, tfmot.quantization.keras.quantizers.LastValueQuantizer(
            num_bits=8, per_axis=True, symmetric=True, narrow_range=True))]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [EmaRangeQuantizer()]

    def get_config(self):
        return {}


@tf_keras.utils.register_keras_serializable("tfllm")
class DenseQuantizeWrapper(tfmot.quantization.keras.QuantizeWrapperV2):
    """TF-MOT's quantize wrapper around a Dense, computed as a 1x1 convolution, plus fake-quant of
    the layer's input.

    Why a convolution: per-output-channel int8 kernels (what post-training int8 uses; per-tensor
    costs ~1 point on SST-2) only survive the TFLite converter on a Conv2D: for a MatMul it has
    to transpose the fake-quantised kernel to FULLY_CONNECTED's layout and fails with
    "tfl.transpose op has mismatched quantized axes". The [batch x length, in] input becomes a
    [1, 1, batch x length, in] image and the kernel a [1, 1, in, out] filter: the same numbers,
    one int8 CONV_2D (a GEMM in LiteRT's kernels) with a per-channel int8 filter.
    """

    token_mask = None  # set around a forward pass by :func:`ranges_over_tokens`

    def build(self, input_shape):
        super().build(input_shape)
        self._input_quantizer = EmaRangeQuantizer()
        self._input_quantizer_vars = self._input_quantizer.build(input_shape, "input", self)

    def call(self, inputs, training=None, **kwargs):
        if training is None:
            training = tf_keras.backend.learning_phase()
        dense, mask = self.layer, self.token_mask
        inputs = self._input_quantizer(inputs, training, self._input_quantizer_vars, token_mask=mask)
        kernel, quantizer, quantizer_vars = self._weight_vars[0]
        units = kernel.shape[-1]
        # fake-quantise the kernel in its 4-D filter shape, so no reshape sits between the two
        kernel = _quantize(quantizer, tf.reshape(kernel, [1, 1, *kernel.shape]), training, quantizer_vars)
        image = tf.reshape(inputs, [1, 1, -1, inputs.shape[-1]])
        outputs = tf.nn.conv2d(image, tf.cast(kernel, image.dtype), strides=1, padding="VALID")
        if dense.use_bias:
            outputs = tf.nn.bias_add(outputs, tf.cast(dense.bias, outputs.dtype))
        if dense.activation is not None:
            outputs = dense.activation(outputs)
        outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [units]], 0))
        outputs.set_shape(inputs.shape[:-1].concatenate([units]))
        return _quantize(self._output_quantizers[0], outputs, training, self._output_quantizer_vars,
                         token_mask=mask)


# TFLite's int8 softmax output: scale 1/256, zero point -128, i.e. the range [0, 255/256]
PROBS_RANGE = (0.0, 255.0 / 256.0)


@tf_keras.utils.register_keras_serializable("tfllm")
class ProbsQuantizeDropout(tf_keras.layers.Layer):
    """Attention dropout preceded by 8-bit fake-quant of the probabilities to :data:`PROBS_RANGE`."""

    def __init__(self, dropout, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout

    def call(self, inputs, training=None):
        quantized = tf.quantization.fake_quant_with_min_max_args(
            tf.cast(inputs, tf.float32), min=PROBS_RANGE[0], max=PROBS_RANGE[1], num_bits=8)
        return self.dropout(tf.cast(quantized, inputs.dtype), training=training)


def _main_layer(hf_model):
    """The ``TFBertMainLayer`` of a HF BERT task model (or the main layer itself)."""
    return hf_model.bert if hasattr(hf_model, "bert") else hf_model


def _self_attentions(hf_model) -> list:
    """The self-attention layer of every encoder layer."""
    return [layer.attention.self_attention for layer in _main_layer(hf_model).encoder.layer]


def dense_slots(hf_model, groups: Sequence[str]) -> list[tuple[str, object, str]]:
    """``(key, parent layer, attribute)`` of every Dense to quantise, in encoder order."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise TfllmError(f"config key compression.qat.layers: {sorted(unknown)} cannot be "
                         f"quantised this way (choose from {', '.join(GROUPS)})")
    main = _main_layer(hf_model)
    slots = []
    for i, layer in enumerate(main.encoder.layer):
        if "attention" in groups:
            for attr in ("query", "key", "value"):
                slots.append((f"layer_{i}/attention/{attr}", layer.attention.self_attention, attr))
            slots.append((f"layer_{i}/attention/output", layer.attention.dense_output, "dense"))
        if "feed_forward" in groups:
            slots.append((f"layer_{i}/intermediate", layer.intermediate, "dense"))
            slots.append((f"layer_{i}/output", layer.bert_output, "dense"))
    return slots


@contextlib.contextmanager
def ranges_over_tokens(hf_model, inputs):
    """Within this block the quantize wrappers' range statistics skip ``inputs``' padding."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    layers = wrappers(hf_model)
    for layer in layers:
        object.__setattr__(layer, "token_mask", mask)  # untracked: a tensor, not a weight
    try:
        yield
    finally:
        for layer in layers:
            object.__setattr__(layer, "token_mask", None)


def wrappers(hf_model) -> list[DenseQuantizeWrapper]:
    """The quantize wrappers currently inside ``hf_model`` (tests: 'really present in training')."""
    return [layer for layer in hf_model.submodules if isinstance(layer, DenseQuantizeWrapper)]


def _build(hf_model) -> None:
    ids = tf.constant([[101, 102]], tf.int32)
    hf_model({"input_ids": ids, "attention_mask": tf.ones_like(ids), "token_type_ids": tf.zeros_like(ids)},
             training=False)


def wrap_bert(hf_model, groups: Sequence[str]) -> list[tuple[str, DenseQuantizeWrapper]]:
    """Replace the chosen Dense layers of ``hf_model`` by quantize wrappers, in place; builds them."""
    if wrappers(hf_model):
        raise TfllmError("the model already has quantize wrappers")
    wrapped = []
    for key, parent, attr in dense_slots(hf_model, groups):
        dense = getattr(parent, attr)
        if not isinstance(dense, tf_keras.layers.Dense):
            raise TfllmError(f"QAT: {key} is a {type(dense).__name__}, not a Dense layer")
        wrapper = DenseQuantizeWrapper(dense, DenseQuantizeConfig())
        setattr(parent, attr, wrapper)
        wrapped.append((key, wrapper))
    if "attention" in groups:
        for attention in _self_attentions(hf_model):
            attention.dropout = ProbsQuantizeDropout(attention.dropout)
    _build(hf_model)
    return wrapped


def ranges(hf_model, groups: Sequence[str]) -> dict:
    """``{dense key: {quantizer variable: value}}`` of the wrapped model (the learned ranges)."""
    out = {}
    for key, parent, attr in dense_slots(hf_model, groups):
        wrapper = getattr(parent, attr)
        if not isinstance(wrapper, DenseQuantizeWrapper):
            raise TfllmError(f"QAT: {key} is not wrapped")
        out[key] = {_var_name(v): np.asarray(v.numpy()).tolist() for v in wrapper._non_trainable_weights}
    return out


def _var_name(variable) -> str:
    return variable.name.split(":")[0].split("/")[-1]


def unwrap(hf_model, groups: Sequence[str]) -> dict:
    """Put the plain Dense layers back (kernels as variables again); returns the learned ranges."""
    learned = ranges(hf_model, groups)
    for key, parent, attr in dense_slots(hf_model, groups):
        wrapper = getattr(parent, attr)
        dense = wrapper.layer
        dense.kernel = wrapper._weight_vars[0][0]  # the variable, instead of its fake-quant tensor
        setattr(parent, attr, dense)
    for attention in _self_attentions(hf_model):
        if isinstance(attention.dropout, ProbsQuantizeDropout):
            attention.dropout = attention.dropout.dropout
    return learned


def rewrap(hf_model, groups: Sequence[str], learned: dict) -> list:
    """Wrap a loaded (QAT-trained) model again and restore the learned ranges, for export."""
    wrapped = wrap_bert(hf_model, groups)
    for key, wrapper in wrapped:
        if key not in learned:
            raise TfllmError(f"QAT ranges have no entry for {key}; was the run trained with the "
                             f"same compression.qat.layers?")
        values = learned[key]
        for variable in wrapper._non_trainable_weights:
            name = _var_name(variable)
            if name in values:
                value = np.asarray(values[name], dtype=variable.dtype.as_numpy_dtype)
                if value.shape != tuple(variable.shape):
                    raise TfllmError(f"QAT range {key}/{name} has shape {list(value.shape)}, this "
                                     f"tfllm expects {variable.shape.as_list()} (a run trained by an "
                                     f"older version, with per-tensor kernels?); retrain the QAT phase")
                variable.assign(value)
    return wrapped


def fake_quantize_embeddings(hf_model, fixed_range: bool = True) -> None:
    """Make ``hf_model``'s word-embedding lookup read an 8-bit fake-quantised table (symmetric,
    per tensor, range = the table's largest magnitude), so the QAT export stores it as int8 like
    the kernels. In training (``fixed_range=False``) the range follows the table as it learns;
    for export it is the trained table's, as a constant. Patches the layer's ``call`` in place;
    :func:`plain_embeddings` undoes it."""
    embeddings = _main_layer(hf_model).embeddings
    plain_embeddings(hf_model)
    plain_call = embeddings.call
    fixed = float(np.max(np.abs(embeddings.weight.numpy()))) if fixed_range else None

    def call(*args, **kwargs):
        table = embeddings.weight
        if fixed is not None:
            quantized = tf.quantization.fake_quant_with_min_max_args(
                table, min=-fixed, max=fixed, num_bits=8, narrow_range=True)
        else:
            bound = tf.stop_gradient(tf.reduce_max(tf.abs(table)))
            quantized = tf.quantization.fake_quant_with_min_max_vars(
                table, -bound, bound, num_bits=8, narrow_range=True)
        # object.__setattr__: Keras' attribute tracking would re-append the variable to the
        # layer's weights (changing the order of trainable_variables) when it is put back
        object.__setattr__(embeddings, "weight", quantized)
        try:
            return plain_call(*args, **kwargs)
        finally:
            object.__setattr__(embeddings, "weight", table)

    embeddings.call = call


def plain_embeddings(hf_model) -> None:
    """Undo :func:`fake_quantize_embeddings` (no-op if not patched)."""
    embeddings = _main_layer(hf_model).embeddings
    if "call" in vars(embeddings):
        del embeddings.call


class QATClassifier(BertClassifier):
    """A ``BertClassifier`` whose HF model has quantize wrappers in place (same variables)."""

    def __init__(self, bert, num_labels: int, groups, **kwargs):
        super().__init__(bert, num_labels, **kwargs)
        self.groups = list(groups)

    def call(self, inputs, training=False):
        with ranges_over_tokens(self.bert, inputs):
            return super().call(inputs, training=training)


def turn_off_dropout(hf_model) -> int:
    """Set the rate of every dropout layer in ``hf_model`` to 0; returns how many were on."""
    active = [layer for layer in hf_model.submodules
              if isinstance(layer, tf_keras.layers.Dropout) and layer.rate > 0]
    for layer in active:
        layer.rate = 0.0
    return len(active)


def wrap(model: BertClassifier, groups: Sequence[str], dropout: bool = False) -> QATClassifier:
    """Wrap ``model`` for QAT (in place; same variables); ``dropout=False`` turns dropout off.

    Call it inside the strategy's scope: with several replicas every forward pass synchronises
    the activation ranges, which cannot happen inside gradient accumulation's loop.
    """
    if model.grad_accum_steps > 1 and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise TfllmError("config key train.grad_accum_steps: QAT with several replicas needs 1 (the "
                         "activation ranges are synchronised across replicas in every forward pass)")
    if not dropout and turn_off_dropout(model.bert):
        log.info("QAT: dropout off, so the measured activation ranges are those of inference "
                 "(compression.qat.dropout)")
    wrapped = wrap_bert(model.bert, groups)
    fake_quantize_embeddings(model.bert, fixed_range=False)
    log.info("QAT: fake-quantising %d Dense layers (%s): int8 kernels, inputs and outputs; "
             "attention probabilities; the word-embedding table", len(wrapped), ", ".join(groups))
    return QATClassifier(model.bert, model.num_labels, groups, class_weights=model.class_weights,
                         grad_accum_steps=model.grad_accum_steps, max_grad_norm=model.max_grad_norm)


def strip(model: QATClassifier) -> tuple[BertClassifier, dict]:
    """The plain classifier (wrappers removed) and the learned ranges."""
    learned = unwrap(model.bert, model.groups)
    plain_embeddings(model.bert)
    plain = BertClassifier(model.bert, model.num_labels, grad_accum_steps=model.grad_accum_steps,
                           max_grad_norm=model.max_grad_norm)
    return plain, learned
