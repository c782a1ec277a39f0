"""A sequence classifier's last layer computes [CLS] only (models/first_token.py): same logits,
same gradients, same weights; other heads keep every position."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from transformers import TFBertForMaskedLM, TFBertForSequenceClassification, TFBertForTokenClassification

from conftest import tiny_bert
from tfllm.models.checkpoints import load_pretrained
from tfllm.models.first_token import FirstTokenBertLayer, first_token_last_layer

IDS = tf.constant([[2, 5, 9, 11, 3, 0], [2, 7, 3, 0, 0, 0], [2, 8, 8, 8, 8, 3]])
MASK = tf.cast(IDS > 0, tf.int32)
LABELS = tf.constant([0, 1, 1])


def logits_and_grads(model):
    with tf.GradientTape() as tape:
        logits = model(IDS, attention_mask=MASK, training=False).logits
        loss = tf_keras.losses.sparse_categorical_crossentropy(LABELS, tf.cast(logits, tf.float32), from_logits=True)
    grads = tape.gradient(loss, model.trainable_variables)
    return logits.numpy().astype(np.float32), [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_first_token_layer_gives_the_same_logits_and_gradients(policy):
    model = tiny_bert(policy)
    names = [w.name for w in model.weights]
    full_logits, full_grads = logits_and_grads(model)
    assert model.bert(IDS, attention_mask=MASK).last_hidden_state.shape == (3, 6, 32)

    first_token_last_layer(model)
    assert type(model.bert.encoder.layer[-1]) is FirstTokenBertLayer
    assert type(model.bert.encoder.layer[0]) is not FirstTokenBertLayer
    assert model.bert(IDS, attention_mask=MASK).last_hidden_state.shape == (3, 1, 32)  # [CLS] only
    logits, grads = logits_and_grads(model)
    np.testing.assert_allclose(logits, full_logits, rtol=1e-6, atol=1e-7)  # matmul blocking may round apart
    for got, want in zip(grads, full_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 if policy == "float32" else 1e-3)
    assert [w.name for w in model.weights] == names  # what it saves and loads is the same


def test_the_padding_mask_still_applies_to_the_last_layers_keys():
    """Padding must stay out of [CLS]'s attention: changing a padded token's id moves nothing."""
    model = first_token_last_layer(tiny_bert())
    changed = tf.tensor_scatter_nd_update(IDS, [[1, 4]], [9])  # row 1, a padded position
    a = model(IDS, attention_mask=MASK).logits.numpy()
    b = model(changed, attention_mask=MASK).logits.numpy()
    np.testing.assert_array_equal(a, b)
    unmasked = model(changed, attention_mask=tf.ones_like(MASK)).logits.numpy()
    assert not np.allclose(unmasked[1], a[1])  # the check above could fail


@pytest.mark.parametrize("model_cls", [TFBertForTokenClassification, TFBertForMaskedLM])
def test_heads_that_read_every_position_keep_the_whole_last_layer(model_cls):
    model = first_token_last_layer(tiny_bert(model_cls=model_cls))
    assert all(type(layer) is not FirstTokenBertLayer for layer in model.bert.encoder.layer)


def test_loading_a_checkpoint_prepares_a_classifier_this_way(tiny_checkpoint):
    classifier, _ = load_pretrained(TFBertForSequenceClassification, tiny_checkpoint, num_labels=2)
    tagger, _ = load_pretrained(TFBertForTokenClassification, tiny_checkpoint, num_labels=3)
    assert type(classifier.bert.encoder.layer[-1]) is FirstTokenBertLayer
    assert type(tagger.bert.encoder.layer[-1]) is not FirstTokenBertLayer
