"""The learning-rate schedule: every update gets a positive rate, the shape BERT's recipe uses."""
import numpy as np
import pytest
import tensorflow as tf

from tfllm.training.optimization import WarmupDecay


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
