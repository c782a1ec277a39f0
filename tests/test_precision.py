"""Where a bfloat16 model computes in float32 (models/precision.py), and the padding default."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from transformers import TFBertForMaskedLM, TFBertForSequenceClassification

from conftest import tiny_bert
from tfllm.config import load_config
from tfllm.data.tokenization import load_tokenizer
from tfllm.models.checkpoints import load_pretrained
from tfllm.models.masked_lm import build_masked_lm
from tfllm.models.precision import (Float32BiasGradientDense, Float32BiasGradientLMHead, Float32ResidualAdd,
                                   UnbiasedDropout, bfloat16_weights_for_inference, float32_bias_gradients,
                                   float32_gelu, float32_residual_stream, gelu_in_float32, keras_policy,
                                   unbiased_dropout)

IDS = tf.constant([[2, 5, 9, 11, 3, 0], [2, 7, 3, 0, 0, 0]])


def op_dtypes(model, op_type: str, attribute: str = "T") -> list:
    """The dtypes (``attribute``) of every ``op_type`` op in the graph of one forward pass."""
    graph = tf.function(lambda ids: model(ids, training=False).logits).get_concrete_function(IDS).graph
    return [op.get_attr(attribute) for op in graph.get_operations() if op.type == op_type]


def test_bf16_gelu_runs_in_float32_and_matches_the_bf16_one():
    plain = tiny_bert("mixed_bfloat16")
    assert op_dtypes(plain, "Erfc") == [tf.bfloat16] * 2  # Hugging Face's GELU, in bf16
    swapped = gelu_in_float32(tiny_bert("mixed_bfloat16"))
    assert all(layer.intermediate.intermediate_act_fn is float32_gelu for layer in swapped.bert.encoder.layer)
    assert op_dtypes(swapped, "Erfc") == [tf.float32] * 2
    a, b = (m(IDS, training=False).logits.numpy().astype(np.float32) for m in (plain, swapped))
    np.testing.assert_allclose(a, b, atol=0.05)  # same function; bf16 rounds differently


def weight_casts(model) -> int:
    """Casts of a float32 weight (a variable read) to bfloat16 in one forward pass's graph."""
    graph = tf.function(lambda ids: model(ids, training=False).logits).get_concrete_function(IDS).graph
    return sum(1 for op in graph.get_operations() if op.type == "Cast" and op.get_attr("DstT") == tf.bfloat16
               and op.inputs[0].op.type == "ReadVariableOp" and op.inputs[0].dtype == tf.float32)


def test_bfloat16_weights_cast_once_give_the_same_logits_and_leave_the_variables():
    model = tiny_bert("mixed_bfloat16")
    before = model(IDS, training=False).logits.numpy()
    weights = [(w.name, w.dtype, w.numpy()) for w in model.weights]
    dense = [layer for layer in model.submodules if isinstance(layer, tf_keras.layers.Dense)]
    assert weight_casts(model) >= 2 * len(dense)  # kernel and bias cast on every call
    bfloat16_weights_for_inference(model)
    assert weight_casts(model) == 0
    np.testing.assert_array_equal(model(IDS, training=False).logits.numpy(), before)  # bit for bit
    assert [(w.name, w.dtype) for w in model.weights] == [(n, d) for n, d, _ in weights]  # what it saves
    for w, (_, _, value) in zip(model.weights, weights):
        np.testing.assert_array_equal(w.numpy(), value)
    assert len(model.trainable_weights) == len(weights)


def test_float32_model_keeps_its_weights_for_inference():
    model = tiny_bert("float32")
    kernels = [layer.kernel for layer in model.submodules if isinstance(layer, tf_keras.layers.Dense)]
    bfloat16_weights_for_inference(model)
    assert [layer.kernel for layer in model.submodules if isinstance(layer, tf_keras.layers.Dense)] == kernels


def test_float32_model_is_unchanged():
    plain, swapped = tiny_bert("float32"), gelu_in_float32(tiny_bert("float32"))
    np.testing.assert_array_equal(plain(IDS).logits.numpy(), swapped(IDS).logits.numpy())
    assert op_dtypes(swapped, "Erfc") == [tf.float32] * 2


def test_masked_lm_head_and_other_activations():
    mlm = gelu_in_float32(tiny_bert("float32", TFBertForMaskedLM))
    assert mlm.mlm.predictions.transform.transform_act_fn is float32_gelu
    relu = gelu_in_float32(tiny_bert("float32", hidden_act="relu"))
    assert all(layer.intermediate.intermediate_act_fn is not float32_gelu for layer in relu.bert.encoder.layer)


def test_loaded_checkpoints_get_it(tiny_checkpoint):
    model, _ = load_pretrained(TFBertForSequenceClassification, tiny_checkpoint, num_labels=2)
    assert all(layer.intermediate.intermediate_act_fn is float32_gelu for layer in model.bert.encoder.layer)
    assert {type(layer) for layer in model.submodules if isinstance(layer, tf_keras.layers.Dropout)} == {UnbiasedDropout}
    assert {type(layer) for layer in model.submodules if isinstance(layer, tf_keras.layers.Dense)} == {Float32BiasGradientDense}
    layer = model.bert.encoder.layer[0]
    assert isinstance(layer.attention.dense_output, Float32ResidualAdd) and isinstance(layer.bert_output, Float32ResidualAdd)


# --- dropout in bfloat16 ------------------------------------------------------------------------
def dropout_output(cls, rate: float, policy: str, shape=(4096, 384)) -> tf.Tensor:
    """``cls(rate)`` made under Keras ``policy`` (a layer computes in its policy's dtype) on ones."""
    with keras_policy(policy):
        layer = cls(rate)
        output = layer(tf.ones(shape, layer.compute_dtype), training=True)
    assert output.dtype == layer.compute_dtype
    return tf.cast(output, tf.float32)


@pytest.mark.parametrize("rate", [0.1, 0.3])
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_half_precision_dropout_keeps_the_expectation(rate, policy):
    """Keras' bf16 dropout averages 0.9968 at rate 0.1 (1.5M draws: sampling noise ~3e-4)."""
    tf_keras.utils.set_random_seed(0)
    output = dropout_output(UnbiasedDropout, rate, policy)
    assert abs(float(tf.reduce_mean(output)) - 1.0) < 1e-3
    assert abs(float(tf.reduce_mean(tf.cast(output != 0, tf.float32))) - (1 - rate)) < 3e-3


def test_a_rate_whose_bfloat16_scale_rounds_to_one_keeps_everything():
    output = dropout_output(UnbiasedDropout, 0.002, "mixed_bfloat16", shape=(64, 32))  # 1/0.998 -> 1.0
    np.testing.assert_array_equal(output.numpy(), np.ones((64, 32), np.float32))


def test_keras_bfloat16_dropout_is_biased():
    """What UnbiasedDropout fixes (if TensorFlow ever fixes it, this fails and the swap can go)."""
    tf_keras.utils.set_random_seed(0)
    assert float(tf.reduce_mean(dropout_output(tf_keras.layers.Dropout, 0.1, "mixed_bfloat16"))) < 0.998


def test_unbiased_dropout_float32_inference_and_seeds():
    x = tf.random.normal([64, 24])
    tf_keras.utils.set_random_seed(3)
    ours = UnbiasedDropout(0.1)(x, training=True)
    tf_keras.utils.set_random_seed(3)
    np.testing.assert_array_equal(ours.numpy(), tf_keras.layers.Dropout(0.1)(x, training=True).numpy())
    half = tf.cast(x, tf.bfloat16)
    masks = []
    with keras_policy("mixed_bfloat16"):
        np.testing.assert_array_equal(UnbiasedDropout(0.1)(half, training=False).numpy(), half.numpy())
        for _ in range(2):
            tf_keras.utils.set_random_seed(5)
            masks.append(UnbiasedDropout(0.1)(half[:, :23], training=True).numpy())  # odd element count
    np.testing.assert_array_equal(masks[0], masks[1])
    assert masks[0].dtype == tf.bfloat16.as_numpy_dtype
    assert masks[0].shape == (64, 23) and 0 < (masks[0] == 0).mean() < 0.3


def test_every_dropout_of_a_model_is_swapped_and_trains():
    bert = unbiased_dropout(tiny_bert("mixed_bfloat16"))
    drops = [layer for layer in bert.submodules if isinstance(layer, tf_keras.layers.Dropout)]
    assert len(drops) == 2 * 3 + 2 and all(type(layer) is UnbiasedDropout for layer in drops)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(bert(IDS, training=True).logits, tf.float32))
    grads = tape.gradient(loss, bert.trainable_variables)
    assert all(g is not None for g in grads)
    np.testing.assert_array_equal(bert(IDS, training=False).logits.numpy(), bert(IDS, training=False).logits.numpy())


def test_scratch_masked_lm_is_prepared(tiny_checkpoint):
    with keras_policy("mixed_bfloat16"):
        model, _ = build_masked_lm(load_config(None, ["model.checkpoint=scratch", "model.preset=tiny"]).model,
                                   load_tokenizer(tiny_checkpoint))
    drops = [layer for layer in model.bert.submodules if isinstance(layer, tf_keras.layers.Dropout)]
    assert drops and all(type(layer) is UnbiasedDropout for layer in drops)


@pytest.mark.parametrize("overrides, multiple", [
    ([], 1), (["train.jit_compile=true"], 8), (["data.pad_to_multiple_of=16"], 16),
    (["data.pad_to_multiple_of=4", "train.jit_compile=true"], 4)])
def test_padding_multiple_default_follows_xla(overrides, multiple):
    assert load_config(None, overrides).padding_multiple == multiple


# --- Dense bias gradients in bfloat16 -------------------------------------------------------------
def dense_outputs_and_gradients(cls, policy: str, shape):
    """A seeded ``cls(8, tanh)`` under ``policy`` on fixed inputs: (outputs, [kernel grad, bias grad])."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape + (16,)), tf.float32)
    upstream = tf.constant(rng.normal(size=shape + (8,)) * 1e-3 + 3e-4, tf.float32)  # small, biased: a bias gradient
    with keras_policy(policy):
        tf_keras.utils.set_random_seed(0)
        layer = cls(8, activation="tanh")
        layer.build((None, 16))
    with tf.GradientTape() as tape:
        outputs = layer(x)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * upstream)
    return outputs.numpy().astype(np.float32), [g.numpy() for g in tape.gradient(loss, [layer.kernel, layer.bias])]


@pytest.mark.parametrize("shape", [(2000,), (4, 500)])
def test_bfloat16_dense_bias_gradient_is_summed_in_float32(shape):
    _, exact = dense_outputs_and_gradients(tf_keras.layers.Dense, "float32", shape)
    keras_out, keras = dense_outputs_and_gradients(tf_keras.layers.Dense, "mixed_bfloat16", shape)
    ours_out, ours = dense_outputs_and_gradients(Float32BiasGradientDense, "mixed_bfloat16", shape)
    error = lambda grads: np.linalg.norm(grads[1] - exact[1]) / np.linalg.norm(exact[1])
    assert error(keras) > 0.02  # TensorFlow's bf16 BiasAddGrad sums in bfloat16 (8% here)
    assert error(ours) < 0.005
    np.testing.assert_array_equal(ours_out, keras_out)  # same outputs, bit for bit
    np.testing.assert_array_equal(ours[0], keras[0])    # same kernel gradient


def test_float32_dense_is_keras_own():
    keras_out, keras = dense_outputs_and_gradients(tf_keras.layers.Dense, "float32", (64,))
    ours_out, ours = dense_outputs_and_gradients(Float32BiasGradientDense, "float32", (64,))
    np.testing.assert_array_equal(ours_out, keras_out)
    for a, b in zip(ours, keras):
        np.testing.assert_array_equal(a, b)


def test_every_dense_of_a_model_is_swapped_with_the_same_logits():
    plain = tiny_bert("mixed_bfloat16")
    swapped = float32_bias_gradients(tiny_bert("mixed_bfloat16"))
    assert {type(layer) for layer in swapped.submodules if isinstance(layer, tf_keras.layers.Dense)} == {
        Float32BiasGradientDense}
    np.testing.assert_array_equal(plain(IDS).logits.numpy(), swapped(IDS).logits.numpy())


def test_masked_lm_head_adds_its_bias_the_same_way():
    plain = tiny_bert("mixed_bfloat16", TFBertForMaskedLM)
    swapped = float32_bias_gradients(tiny_bert("mixed_bfloat16", TFBertForMaskedLM))
    assert type(swapped.mlm.predictions) is Float32BiasGradientLMHead
    np.testing.assert_array_equal(plain(IDS).logits.numpy(), swapped(IDS).logits.numpy())
    with tf.GradientTape() as tape:
        logits = tf.cast(swapped(IDS, training=False).logits, tf.float32)
        loss = tf.reduce_sum(logits * tf.random.stateless_normal(tf.shape(logits), [1, 2]))
    bias = swapped.mlm.predictions.bias
    op_types = {op.type for op in tf.function(lambda: swapped(IDS).logits).get_concrete_function().graph.get_operations()}
    assert tape.gradient(loss, bias) is not None and "BiasAdd" not in op_types


# --- the residual stream in bfloat16 --------------------------------------------------------------
def encoder_outputs(model) -> list:
    """Every encoder layer's output (after the embeddings) for ``IDS``, in inference."""
    return list(model.bert(IDS, output_hidden_states=True, training=False).hidden_states[1:])


def test_bfloat16_residual_stream_is_float32_and_closer_to_float32():
    exact = tiny_bert("float32", hidden_size=64, intermediate_size=128)
    plain, ours = (tiny_bert("mixed_bfloat16", hidden_size=64, intermediate_size=128) for _ in range(2))
    for model in (plain, ours):
        model.set_weights(exact.get_weights())
    float32_residual_stream(ours)
    assert [h.dtype for h in encoder_outputs(plain)] == [tf.bfloat16] * 2
    assert [h.dtype for h in encoder_outputs(ours)] == [tf.float32] * 2
    assert set(op_dtypes(ours, "MatMul")) == {tf.bfloat16}  # the matrix products stay in bfloat16
    reference = np.concatenate([h.numpy().ravel() for h in encoder_outputs(exact)])

    def error(model):
        values = np.concatenate([h.numpy().astype(np.float32).ravel() for h in encoder_outputs(model)])
        return np.linalg.norm(values - reference) / np.linalg.norm(reference)
    assert error(ours) < 0.7 * error(plain), (error(ours), error(plain))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(ours(IDS, training=True).logits, tf.float32) ** 2)
    assert all(g is not None for g in tape.gradient(loss, ours.trainable_variables))


def test_float32_residual_stream_leaves_a_float32_model_as_it_was():
    plain, ours = tiny_bert("float32"), float32_residual_stream(tiny_bert("float32"))
    np.testing.assert_array_equal(plain(IDS).logits.numpy(), ours(IDS).logits.numpy())
    casts = lambda model: len(op_dtypes(model, "Cast", attribute="DstT"))  # noqa: E731
    assert casts(ours) == casts(plain)
