"""Where a bfloat16 model computes in float32 (models/precision.py), and the padding default."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from transformers import TFBertForMaskedLM, TFBertForSequenceClassification

from conftest import tiny_bert
from tfllm.config import load_config
from tfllm.models.checkpoints import load_pretrained
from tfllm.models.precision import bfloat16_weights_for_inference, float32_gelu, gelu_in_float32

IDS = tf.constant([[2, 5, 9, 11, 3, 0], [2, 7, 3, 0, 0, 0]])


def op_dtypes(model, op_type: str) -> list:
    """The dtypes of every ``op_type`` op in the graph of one forward pass."""
    graph = tf.function(lambda ids: model(ids, training=False).logits).get_concrete_function(IDS).graph
    return [op.get_attr("T") for op in graph.get_operations() if op.type == op_type]


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


@pytest.mark.parametrize("overrides, multiple", [
    ([], 1), (["train.jit_compile=true"], 8), (["data.pad_to_multiple_of=16"], 16),
    (["data.pad_to_multiple_of=4", "train.jit_compile=true"], 4)])
def test_padding_multiple_default_follows_xla(overrides, multiple):
    assert load_config(None, overrides).padding_multiple == multiple
