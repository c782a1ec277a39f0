"""Batch planning: determinism, bucketing, resume offsets, replica slicing, padding."""
import numpy as np
import pytest

from tfllm.data.pipeline import BatchPlan, make_dataset, pad_batch, replica_slices
from tfllm.data.tokenization import Encoded


def lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(3, 120, size=n)


def test_every_example_once_per_epoch_and_reproducible():
    plan = BatchPlan(lengths(), batch_size=32, seed=5)
    for epoch in range(3):
        batches = plan.epoch(epoch)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(1000))
        assert all(len(b) == 32 for b in batches[:-1]) or sum(len(b) < 32 for b in batches) == 1
        again = BatchPlan(lengths(), batch_size=32, seed=5).epoch(epoch)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not np.array_equal(np.concatenate(plan.epoch(0)), np.concatenate(plan.epoch(1)))


def test_bucketing_cuts_padding():
    ls = lengths()
    padded = lambda plan: sum(len(b) * ls[b].max() for b in plan.epoch(0))  # noqa: E731
    bucketed = padded(BatchPlan(ls, 32, seed=1, bucketing=True))
    random = padded(BatchPlan(ls, 32, seed=1, bucketing=False))
    assert bucketed < 0.75 * random
    assert bucketed >= ls.sum()


def test_iterate_from_a_step_equals_the_tail_of_a_full_pass():
    plan = BatchPlan(lengths(200), batch_size=16, seed=3)
    full = list(plan.iterate(0, epochs=3))
    for start in (0, 5, 13, 20, 38):
        tail = list(plan.iterate(start, epochs=3))
        assert len(tail) == len(full) - start
        assert all(np.array_equal(a, b) for a, b in zip(tail, full[start:]))


def test_replica_slices_and_weights():
    idx = np.arange(10)
    parts = replica_slices(idx, 3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert np.array_equal(np.concatenate(parts), idx)
    enc = Encoded([np.arange(1, n + 1, dtype=np.int32) for n in (3, 9, 5)],
                  [np.zeros(n, np.int32) for n in (3, 9, 5)], np.array([0, 1, 0], np.int32))
    features, labels, weights = pad_batch(enc, np.array([0, 1]), multiple=8, global_size=3)
    assert features["input_ids"].shape == (2, 16)
    assert features["attention_mask"].sum() == 12
    assert labels.tolist() == [0, 1]
    assert np.allclose(weights, 1 / 3)


@pytest.mark.parametrize("replicas", [1, 2])
def test_dataset_yields_per_replica_slices(replicas):
    enc = Encoded([np.arange(1, n + 1, dtype=np.int32) for n in range(3, 23)],
                  [np.zeros(n, np.int32) for n in range(3, 23)], np.arange(20, dtype=np.int32) % 2)
    plan = BatchPlan(enc.lengths, batch_size=8, seed=0)
    elements = list(make_dataset(enc, plan, num_replicas=replicas, epochs=1).as_numpy_iterator())
    assert len(elements) == plan.steps_per_epoch * replicas
    seen = sum(len(labels) for _, labels, _ in elements)
    assert seen == 20
    total_weight = sum(w.sum() for _, _, w in elements)
    assert total_weight == pytest.approx(plan.steps_per_epoch)  # each global batch sums to 1
