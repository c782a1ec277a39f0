"""Linear-chain CRF: forward algorithm and Viterbi against brute force, gradients, learning
transitions, compact/expand, tf.function with varying shapes, mixed precision."""
import itertools

import numpy as np
import pytest

import tfllm  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from tfllm.models.crf import CRF, compact, expand

LENGTHS = [0, 5, 1, 3, 4, 2]            # a length-0 row and a full-length row (N = 5)


def masks(lengths, width):
    return np.arange(width)[None, :] < np.asarray(lengths)[:, None]


def random_crf(num_tags, seed):
    rng = np.random.default_rng(seed)
    crf = CRF(num_tags)
    crf.transitions.assign(rng.normal(size=(num_tags, num_tags)).astype(np.float32))
    crf.start.assign(rng.normal(size=num_tags).astype(np.float32))
    crf.end.assign(rng.normal(size=num_tags).astype(np.float32))
    return crf


def path_score(crf, emissions, path):
    """s(path) for one row, in numpy."""
    if not path:
        return 0.0
    trans, start, end = crf.transitions.numpy(), crf.start.numpy(), crf.end.numpy()
    score = start[path[0]] + end[path[-1]] + sum(emissions[t, y] for t, y in enumerate(path))
    return score + sum(trans[a, b] for a, b in zip(path[:-1], path[1:]))


def all_paths(num_tags, length):
    return [list(p) for p in itertools.product(range(num_tags), repeat=length)]


def brute_log_likelihood(crf, emissions, path):
    if not path:
        return 0.0
    scores = np.array([path_score(crf, emissions, p) for p in all_paths(crf.num_tags, len(path))])
    return path_score(crf, emissions, path) - np.log(np.sum(np.exp(scores)))


def brute_decode(crf, emissions, length):
    paths = all_paths(crf.num_tags, length)
    return max(paths, key=lambda p: path_score(crf, emissions, p)) if length else []


@pytest.mark.parametrize("num_tags", [3, 4])
def test_log_likelihood_matches_brute_force(num_tags):
    rng = np.random.default_rng(num_tags)
    crf = random_crf(num_tags, seed=num_tags + 10)
    emissions = rng.normal(size=(len(LENGTHS), 5, num_tags)).astype(np.float32)
    tags = rng.integers(0, num_tags, size=(len(LENGTHS), 5)).astype(np.int32)
    tags[~masks(LENGTHS, 5)] = -100                         # padding labels must be ignored
    got = crf.log_likelihood(emissions, tags, masks(LENGTHS, 5)).numpy()
    want = [brute_log_likelihood(crf, emissions[b], list(tags[b, :n])) for b, n in enumerate(LENGTHS)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got[0] == 0.0 and np.all(got[1:] < 0)


@pytest.mark.parametrize("num_tags", [3, 4])
def test_decode_matches_brute_force(num_tags):
    rng = np.random.default_rng(num_tags + 1)
    crf = random_crf(num_tags, seed=num_tags + 20)
    emissions = rng.normal(size=(len(LENGTHS), 5, num_tags)).astype(np.float32)
    got = crf.decode(emissions, masks(LENGTHS, 5)).numpy()
    assert got.dtype == np.int32
    for b, n in enumerate(LENGTHS):
        assert list(got[b, :n]) == brute_decode(crf, emissions[b], n)
        assert np.all(got[b, n:] == 0)
    np.testing.assert_array_equal(crf(emissions), crf.decode(emissions, np.ones((6, 5), bool)))


def test_gradients_reach_every_weight_and_the_emissions():
    crf = random_crf(4, seed=3)
    emissions = tf.Variable(np.random.default_rng(0).normal(size=(len(LENGTHS), 5, 4)), dtype=tf.float32)
    tags = np.random.default_rng(1).integers(0, 4, size=(len(LENGTHS), 5)).astype(np.int32)
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(crf.log_likelihood(emissions, tags, masks(LENGTHS, 5)))
    grads = tape.gradient(loss, [crf.transitions, crf.start, crf.end, emissions])
    for grad in grads:
        assert grad is not None and np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)
    assert np.all(grads[3].numpy()[0] == 0)                   # the length-0 row gets no gradient


def bio_data(rows=64, width=8, seed=0):
    """O/B/I tags: entity runs of 1-3 tokens separated by O. A token's feature says only entity or
    not, so B versus I is decided by the transitions (B after O or at the start, I after B/I)."""
    rng = np.random.default_rng(seed)
    tags = np.zeros((rows, width + 3), np.int32)
    for row in tags:
        t = int(rng.integers(0, 2))
        while t < width:
            run = int(rng.integers(1, 4))
            row[t:t + run] = [1] + [2] * (run - 1)           # may run into the 3 spare columns
            t += run + int(rng.integers(1, 3))
    tags = tags[:, :width]
    lengths = rng.integers(3, width + 1, size=rows)
    mask = masks(lengths, width)
    features = np.stack([tags == 0, tags != 0], axis=-1).astype(np.float32)
    return features, np.where(mask, tags, 0), mask


def test_training_learns_transitions():
    tf_keras.utils.set_random_seed(0)
    features, tags, mask = bio_data()
    dense, crf = tf_keras.layers.Dense(3), CRF(3)
    dense.build((None, None, 2))
    variables = dense.trainable_variables + crf.trainable_variables
    optimizer = tf_keras.optimizers.Adam(0.05)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(crf.log_likelihood(dense(features), tags, mask))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    for _ in range(300):
        loss = train_step()
    decoded = crf.decode(dense(features), mask).numpy()
    assert np.mean(decoded[mask] == tags[mask]) > 0.99, float(loss)
    # emissions alone cannot tell B from I (entity tokens share one feature vector)
    per_token = np.argmax(dense(features).numpy(), axis=-1)
    assert np.mean(per_token[mask] == tags[mask]) < 0.9


def test_compact_expand_round_trip():
    rng = np.random.default_rng(5)
    keep = rng.random((5, 7)) < 0.5
    keep[0], keep[1] = False, True                             # an empty row and a full row
    values = rng.normal(size=(5, 7, 3)).astype(np.float32)
    ids = rng.integers(1, 100, size=(5, 7)).astype(np.int32)
    packed, mask = compact(values, keep)
    packed_ids, mask_ids = compact(ids, keep)
    assert packed.shape == (5, 7, 3)
    np.testing.assert_array_equal(mask, masks(keep.sum(1), 7))
    np.testing.assert_array_equal(mask_ids, mask)
    for b in range(5):
        n = keep[b].sum()
        np.testing.assert_array_equal(packed[b, :n], values[b][keep[b]])
        assert np.all(packed[b, n:] == 0) and np.all(packed_ids[b, n:] == 0)
    np.testing.assert_array_equal(expand(packed_ids, keep, fill=-1), np.where(keep, ids, -1))
    np.testing.assert_array_equal(expand(packed, keep), np.where(keep[..., None], values, 0))
    values = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch(values)
        total = tf.reduce_sum(compact(values, keep)[0])
    grad = tape.gradient(total, values).numpy()                # gradients reach the kept values only
    np.testing.assert_array_equal(grad, np.broadcast_to(keep[..., None], (5, 7, 3)))


def test_compact_width_is_the_longest_row_and_at_least_one():
    keep = np.array([[True, False, True, False], [False, True, False, False]])
    assert compact(np.zeros((2, 4)), keep)[0].shape == (2, 2)
    packed, mask = compact(np.zeros((2, 4)), np.zeros((2, 4), bool))
    assert packed.shape == (2, 1) and not np.any(mask)


def test_tf_function_with_varying_shapes():
    crf = random_crf(4, seed=7)
    spec = [tf.TensorSpec([None, None, 4], tf.float32), tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.bool)]

    @tf.function(input_signature=spec, jit_compile=False)
    def both(emissions, tags, mask):
        return crf.log_likelihood(emissions, tags, mask), crf.decode(emissions, mask)

    rng = np.random.default_rng(8)
    for rows, width in [(3, 3), (6, 5), (2, 0)]:
        emissions = rng.normal(size=(rows, width, 4)).astype(np.float32)
        tags = rng.integers(0, 4, size=(rows, width)).astype(np.int32)
        mask = masks(LENGTHS[:rows], width)
        got_ll, got_path = both(emissions, tags, mask)
        np.testing.assert_allclose(got_ll, crf.log_likelihood(emissions, tags, mask), rtol=1e-6)
        np.testing.assert_array_equal(got_path, crf.decode(emissions, mask))
        assert got_path.shape == (rows, width)
    assert len(both._list_all_concrete_functions()) == 1


def test_mixed_bfloat16_keeps_the_crf_in_float32():
    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        dense, crf = tf_keras.layers.Dense(3), CRF(3)
        emissions = dense(np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32))
        assert emissions.dtype == tf.bfloat16
        assert all(w.dtype == tf.float32 and type(w).__name__ != "AutoCastVariable" for w in crf.weights)
        mask = masks([4, 2], 4)
        with tf.GradientTape() as tape:
            ll = crf.log_likelihood(emissions, np.zeros((2, 4), np.int32), mask)
        assert ll.dtype == tf.float32 and np.all(np.isfinite(ll.numpy()))
        assert tape.gradient(ll, crf.transitions) is not None
        assert crf(emissions, mask=mask).dtype == tf.int32
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def test_config_round_trip():
    crf = CRF(5, name="ner_crf")
    clone = CRF.from_config(crf.get_config())
    assert clone.num_tags == 5 and clone.name == "ner_crf" and clone.transitions.shape == (5, 5)


def to_tflite(fn, specs, trackable):
    """Convert with TFLite built-in ops only (raises if any op would need Select TF ops)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(fn, input_signature=specs).get_concrete_function()], trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def test_tflite_builtins_decode_at_batch_one_and_compact_expand_at_any_batch():
    from ai_edge_litert.interpreter import Interpreter
    crf = random_crf(4, seed=9)

    def tag_pieces(emissions, keep):
        packed, mask = compact(emissions, keep)
        return expand(crf.decode(packed, mask), keep, fill=-1)

    # decode's scans need a static batch (TFLite lowers TensorLists only with static elements):
    # batch 1 and any length, as tfllm's TFLite export uses
    model = to_tflite(tag_pieces, [tf.TensorSpec([1, None, 4], tf.float32),
                                   tf.TensorSpec([1, None], tf.bool)], crf)
    runner = Interpreter(model_content=model).get_signature_runner()
    rng = np.random.default_rng(10)
    for length in [7, 1, 12]:
        emissions = rng.normal(size=(1, length, 4)).astype(np.float32)
        keep = rng.random((1, length)) < 0.6
        got = runner(emissions=emissions, keep=keep)["output_0"]
        np.testing.assert_array_equal(got, tag_pieces(emissions, keep))
    to_tflite(lambda values, keep: expand(compact(values, keep)[0], keep),
              [tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, None], tf.bool)], crf)


def test_numpy_viterbi_of_predictions_equals_the_layers_decode():
    """Predictions decode the CRF in numpy (any backend gives emissions): the same paths as TF."""
    from tfllm.tasks.token_classification import viterbi

    rng = np.random.default_rng(3)
    crf = CRF(5)
    crf.build((None, None, 5))
    for variable in (crf.transitions, crf.start, crf.end):
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    emissions = rng.normal(size=(4, 9, 5)).astype(np.float32)
    decoded = crf.decode(tf.constant(emissions), tf.ones((4, 9), tf.bool)).numpy()
    weights = [v.numpy() for v in (crf.transitions, crf.start, crf.end)]
    for row in range(4):
        np.testing.assert_array_equal(viterbi(emissions[row], *weights), decoded[row])


def test_lr_multiplier_moves_the_scores_that_many_times_faster_under_adam():
    """One Adam step moves each weight by about the learning rate: with the multiplier k the
    effective scores move k times as far (what BERT-CRF taggers need at fine-tuning rates)."""
    rng = np.random.default_rng(0)
    emissions = tf.constant(rng.normal(size=(3, 6, 4)).astype(np.float32))
    tags = tf.constant(rng.integers(0, 4, size=(3, 6)).astype(np.int32))
    mask = tf.ones((3, 6), tf.bool)
    moved = {}
    for k in (1.0, 100.0):
        crf = CRF(4, lr_multiplier=k)
        optimizer = tf_keras.optimizers.Adam(1e-3)
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(crf.log_likelihood(emissions, tags, mask))
        optimizer.apply_gradients(zip(tape.gradient(loss, crf.trainable_variables), crf.trainable_variables))
        scores = crf.scores()
        np.testing.assert_allclose(scores["transitions"], crf.transitions.numpy() * k, rtol=1e-6)
        moved[k] = np.abs(scores["transitions"]).max()
    assert moved[100.0] == pytest.approx(100 * moved[1.0], rel=1e-3)
