"""The learning-rate schedule: every update gets a positive rate, the shape BERT's recipe uses."""
import numpy as np
import pytest
import tensorflow as tf

from tfllm.training.optimization import FusedAdamW, WarmupDecay, make_optimizer


def rates(schedule, total):
    return np.array([float(schedule(tf.constant(i))) for i in range(total)])


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_no_update_runs_at_rate_zero(kind):
    r = rates(WarmupDecay(1e-3, total_steps=10, warmup_steps=2, kind=kind), 10)
    assert (r > 0).all(), r
    assert r[0] == pytest.approx(5e-4) and r[1] == pytest.approx(1e-3)  # warm-up 1/2, 2/2


def test_linear_decay_ends_one_step_above_zero():
    r = rates(WarmupDecay(1e-3, total_steps=10, warmup_steps=2), 10)
    # decay over the 8 updates after warm-up: 8/8, 7/8, ..., 1/8 of the peak
    np.testing.assert_allclose(r[2:], 1e-3 * np.arange(8, 0, -1) / 8, rtol=1e-6)
    assert float(WarmupDecay(1e-3, 10, 2)(tf.constant(10))) == 0.0  # after the last update


def test_without_warmup_the_first_update_runs_at_the_peak():
    r = rates(WarmupDecay(2e-5, total_steps=4, warmup_steps=0), 4)
    np.testing.assert_allclose(r, 2e-5 * np.array([4, 3, 2, 1]) / 4, rtol=1e-6)


# --- the fused update: Keras' AdamW + clipping, as one XLA function --------------------------
def _variables():
    rng = np.random.default_rng(0)
    return [tf.Variable(rng.normal(size=(50, 8)).astype("float32"), name="embeddings/word_embeddings"),
            tf.Variable(rng.normal(size=(8, 4)).astype("float32"), name="dense/kernel"),
            tf.Variable(rng.normal(size=(4,)).astype("float32"), name="dense/bias"),
            tf.Variable(rng.normal(size=(8,)).astype("float32"), name="LayerNorm/gamma")]


def _gradients(step: int, variables):
    """A sparse gradient with a repeated row (token seen twice) and dense ones, large enough to clip."""
    rng = np.random.default_rng(step + 1)
    rows = tf.constant([3, 7, 3, 49])
    sparse = tf.IndexedSlices(tf.constant(rng.normal(size=(4, 8)).astype("float32")), rows, tf.constant([50, 8]))
    return [sparse] + [tf.constant(rng.normal(size=v.shape).astype("float32") * 3) for v in variables[1:]]


def _keras_reference(variables, steps: int, max_norm: float):
    """What the unfused path does: merge repeated rows, global-norm clip, Keras' AdamW."""
    optimizer = make_optimizer(1e-2, total_steps=steps, warmup_ratio=0.2, fused=False)
    norms = []
    for step in range(steps):
        grads = [tf.convert_to_tensor(g) for g in _gradients(step, variables)]
        norm = tf.linalg.global_norm(grads)
        grads, _ = tf.clip_by_global_norm(grads, max_norm, use_norm=norm)
        optimizer.apply_gradients(zip(grads, variables))
        norms.append(float(norm))
    return norms, optimizer


@pytest.mark.parametrize("max_norm", [1.0, None])
def test_fused_adamw_matches_keras_adamw_with_clipping(max_norm):
    reference_vars, fused_vars = _variables(), _variables()
    norms, reference = _keras_reference(reference_vars, 5, max_norm or 1e9)
    optimizer = make_optimizer(1e-2, total_steps=5, warmup_ratio=0.2)
    assert isinstance(optimizer, FusedAdamW)
    step = tf.function(lambda g: optimizer.apply_clipped(g, fused_vars, max_norm))
    fused_norms = [float(step(_gradients(i, fused_vars))) for i in range(5)]
    np.testing.assert_allclose(fused_norms, norms, rtol=1e-5)
    for ours, theirs in zip(fused_vars, reference_vars):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=2e-5, atol=1e-6, err_msg=ours.name)
    assert int(optimizer.iterations) == int(reference.iterations) == 5
    # the moments Keras checkpoints are the same variables, with the same values
    for ours, theirs in zip(optimizer.variables, reference.variables):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=2e-5, atol=1e-7)


def test_fused_adamw_skips_weight_decay_on_layer_norm_and_biases():
    variables = _variables()
    optimizer = make_optimizer(1e-1, total_steps=1, warmup_ratio=0.0, weight_decay=0.5)
    before = [v.numpy().copy() for v in variables]
    optimizer.apply_clipped([tf.zeros_like(v) for v in variables], variables, None)  # decay only
    np.testing.assert_allclose(variables[0].numpy(), before[0] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(variables[2].numpy(), before[2])  # bias: no decay
    np.testing.assert_allclose(variables[3].numpy(), before[3])  # LayerNorm: no decay
