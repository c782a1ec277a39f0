"""Masked-LM masking in TensorFlow ops: statistics, never special tokens, labels, whole words."""
import numpy as np
import pytest
import tensorflow as tf

from tfllm.data.masking import IGNORE, MaskingSpec, batch_seed, make_masking_fn, mask_tokens
from tfllm.data.pipeline import BatchPlan, make_dataset
from tfllm.data.tokenization import Encoded, load_tokenizer
from tfllm.errors import TfllmError

VOCAB = 1000
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def spec(p=0.15, **kwargs):
    return MaskingSpec(vocab_size=VOCAB, mask_token_id=MASK, special_ids=[PAD, UNK, CLS, SEP, MASK],
                       mlm_probability=p, **kwargs)


def random_batch(rows=512, width=128, seed=0):
    """[CLS] ordinary ids ... [SEP] then padding, with some [UNK] and [SEP] inside."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(rows, width)).astype(np.int32)
    lengths = rng.integers(width // 2, width + 1, size=rows)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = CLS
    ids[np.arange(rows), lengths - 1] = SEP
    ids[rng.random((rows, width)) < 0.01] = UNK
    ids[mask == 0] = PAD
    return ids, mask


def test_masking_statistics_on_a_large_batch():
    ids, attention = random_batch()
    masked, labels = (t.numpy() for t in mask_tokens(ids, attention, spec(), seed=[7, 11]))
    eligible = (attention == 1) & ~np.isin(ids, [PAD, UNK, CLS, SEP, MASK])
    chosen = labels != IGNORE
    assert chosen.sum() / eligible.sum() == pytest.approx(0.15, abs=0.005)
    to_mask = chosen & (masked == MASK)
    to_random = chosen & (masked != MASK) & (masked != ids)
    kept = chosen & (masked == ids)
    n = chosen.sum()
    assert to_mask.sum() / n == pytest.approx(0.8, abs=0.015)
    assert to_random.sum() / n == pytest.approx(0.1, abs=0.01)
    assert kept.sum() / n == pytest.approx(0.1, abs=0.01)
    # random replacements are ordinary tokens, spread over the vocabulary
    replaced = masked[to_random]
    assert not np.isin(replaced, [PAD, UNK, CLS, SEP, MASK]).any()
    assert len(np.unique(replaced)) > 0.5 * min(len(replaced), VOCAB)


def test_never_special_or_padding_and_labels_exactly_at_chosen_positions():
    ids, attention = random_batch(rows=256, seed=1)
    for seed in range(3):
        masked, labels = (t.numpy() for t in mask_tokens(ids, attention, spec(0.5), seed=[seed, 3]))
        special = np.isin(ids, [PAD, UNK, CLS, SEP, MASK]) | (attention == 0)
        chosen = labels != IGNORE
        assert not (chosen & special).any()
        np.testing.assert_array_equal(masked[special], ids[special])
        np.testing.assert_array_equal(labels[chosen], ids[chosen])           # original ids
        np.testing.assert_array_equal(masked[~chosen], ids[~chosen])         # untouched elsewhere
        assert (labels[~chosen] == IGNORE).all()


def test_masks_are_deterministic_per_batch_and_differ_between_batches():
    ids, attention = random_batch(rows=8, seed=2)
    s = spec()
    a = mask_tokens(ids, attention, s, batch_seed(ids, 42))[1].numpy()
    b = mask_tokens(ids, attention, s, batch_seed(ids, 42))[1].numpy()
    c = mask_tokens(ids, attention, s, batch_seed(ids, 43))[1].numpy()
    d = mask_tokens(ids[::-1].copy(), attention[::-1].copy(), s, batch_seed(ids[::-1].copy(), 42))[1].numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a[::-1] != d).any()


def test_pipeline_masks_differ_every_epoch():
    rng = np.random.default_rng(0)
    rows = [rng.integers(5, VOCAB, size=32).astype(np.int32) for _ in range(16)]
    for r in rows:
        r[0], r[-1] = CLS, SEP
    encoded = Encoded(rows, [np.zeros_like(r) for r in rows])
    plan = BatchPlan(encoded.lengths, batch_size=16, seed=0)  # one batch per epoch
    batches = list(make_dataset(encoded, plan, epochs=3, map_fn=make_masking_fn(spec(), seed=5)))
    assert len(batches) == 3
    by_epoch = []
    for (features, labels, weights), indices in zip(batches, [plan.epoch(e)[0] for e in range(3)]):
        order = np.argsort(indices)  # back to example order
        by_epoch.append(labels.numpy()[order])
        assert labels.shape == (16, 32) and weights.numpy() == pytest.approx(np.full(16, 1 / 16))
    assert (by_epoch[0] != by_epoch[1]).any() and (by_epoch[1] != by_epoch[2]).any()


def test_a_batch_that_repeats_gets_new_masks_each_epoch_but_held_out_masks_stay():
    rng = np.random.default_rng(1)
    rows = [rng.integers(5, VOCAB, size=24).astype(np.int32) for _ in range(8)]
    encoded = Encoded(rows, [np.zeros_like(r) for r in rows])
    plan = BatchPlan(encoded.lengths, batch_size=8, shuffle=False)  # the same batch every epoch
    masking = make_masking_fn(spec(), seed=5)
    epochs = [b[1].numpy() for b in make_dataset(encoded, plan, epochs=3, map_fn=masking)]
    assert (epochs[0] != epochs[1]).any() and (epochs[1] != epochs[2]).any()
    again = [b[1].numpy() for b in make_dataset(encoded, plan, epochs=1, map_fn=masking)]
    np.testing.assert_array_equal(again[0], epochs[0])  # a held-out pass: epoch 0's masks
    resumed = [b[1].numpy() for b in make_dataset(encoded, plan, start_step=2, epochs=3, map_fn=masking)]
    np.testing.assert_array_equal(resumed[0], epochs[2])  # resume re-draws the same masks


def test_nsp_labels_ride_in_an_extra_column():
    ids, attention = random_batch(rows=4, width=16)
    features = {"input_ids": tf.constant(ids), "attention_mask": tf.constant(attention),
                "token_type_ids": tf.zeros_like(ids)}
    nsp = tf.constant([0, 1, 1, 0], tf.int32)
    _, y, _ = make_masking_fn(spec(), seed=1, nsp=True)(features, nsp, tf.fill([4], 0.25))
    assert y.shape == (4, 17)
    np.testing.assert_array_equal(y[:, -1].numpy(), [0, 1, 1, 0])


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from tfllm.models.checkpoints import resolve_checkpoint

    return load_tokenizer(resolve_checkpoint("packaged:minilm-l6"))


def test_whole_word_masking_never_splits_a_word(minilm_tokenizer):
    tok = minilm_tokenizer
    text = ("unbelievably overacted melodrama with extraordinarily unconvincing characterisation, "
            "cinematographically breathtaking nonetheless; hyperventilating protagonists everywhere")
    enc = tok([text] * 400, return_tensors="np")
    ids, attention = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    s = MaskingSpec.from_tokenizer(tok, mlm_probability=0.3, whole_word=True)
    masked, labels = (t.numpy() for t in mask_tokens(ids, attention, s, seed=[1, 2]))
    tokens = tok.convert_ids_to_tokens(ids[0])
    continuation = np.array([t.startswith("##") for t in tokens])
    assert continuation.sum() >= 10  # the text really has multi-piece words
    word = np.cumsum(~continuation) - 1
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS], [SEP]
    for w in np.unique(word):
        cols = np.flatnonzero(word == w)
        # every piece of a word is chosen together, and replaced together ([MASK] or not)
        assert (chosen[:, cols] == chosen[:, cols[:1]]).all(), tokens[cols[0]]
        is_mask = masked[:, cols] == tok.mask_token_id
        assert (is_mask == is_mask[:, :1]).all(), tokens[cols[0]]
    ordinary = ~np.isin(ids, tok.all_special_ids)
    assert chosen.sum() / ordinary.sum() == pytest.approx(0.3, abs=0.03)


def test_probability_outside_zero_one_is_an_error():
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(TfllmError, match="mlm_probability"):
            spec(p)
