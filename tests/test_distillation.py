"""Knowledge distillation (compression.distillation) on the tiny random BERT."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import sentiment_rows, tiny_overrides, write_tsv
from tfllm.config import ModelConfig, load_config
from tfllm.errors import TfllmError
from tfllm.train import run_training


@pytest.fixture(scope="module")
def teacher_run(tiny_checkpoint, tmp_path_factory):
    """A fine-tuned tiny classifier (labels neg, pos) and its data files."""
    root = tmp_path_factory.mktemp("distillation")
    train, dev = write_tsv(root / "train.tsv", sentiment_rows(4)), write_tsv(root / "dev.tsv", sentiment_rows(1))
    run_dir = run_training(load_config(None, tiny_overrides(tiny_checkpoint, train, dev, root / "teacher")))
    return run_dir, train, dev


def test_distillation_loss_is_label_ce_plus_softened_kl(tiny_checkpoint):
    from test_training import tiny_batches

    from tfllm.data.pipeline import make_dataset
    from tfllm.models.classifier import build_classifier

    def classifier(seed):
        tf_keras.utils.set_random_seed(seed)
        return build_classifier(ModelConfig(checkpoint=tiny_checkpoint), num_labels=2)[0]

    student, teacher = classifier(0), classifier(1)
    # a random tiny BERT predicts ~uniformly, and its [CLS] vector barely depends on the input (so a
    # random head could agree with the student's by chance): make the teacher confident through the bias
    teacher.bert.classifier.bias.assign([6.0, -6.0])
    student.distill_from(teacher, temperature=3.0, weight=0.25)
    enc, plan = tiny_batches(tiny_checkpoint)
    x, y = next(iter(make_dataset(enc, plan, epochs=1)))[:2]

    loss, logits = student.per_example_loss(x, y, training=True)
    s, t, labels = logits.numpy() / 3.0, teacher(x, training=False).numpy() / 3.0, y.numpy()
    log_s = s - np.log(np.exp(s).sum(-1, keepdims=True))
    p_t = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    kl = (p_t * (np.log(p_t) - log_s)).sum(-1)
    ce = -(logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True)))[np.arange(len(labels)), labels]
    np.testing.assert_allclose(loss.numpy(), 0.75 * ce + 0.25 * 9.0 * kl, rtol=1e-4, atol=1e-6)
    assert np.all(kl > 1e-3)  # the two models disagree: the term is really there

    eval_loss, eval_logits = student.per_example_loss(x, y, training=False)  # evaluation: CE only
    ce_eval = -tf.nn.log_softmax(eval_logits).numpy()[np.arange(len(labels)), labels]
    np.testing.assert_allclose(eval_loss.numpy(), ce_eval, rtol=1e-5)
    assert not any(v is w for v in student.trainable_variables for w in teacher.trainable_variables)


def test_pruning_run_distils_from_the_checkpoint_it_starts_from(teacher_run, tmp_path):
    teacher, train, dev = teacher_run
    cfg = load_config(None, tiny_overrides(
        str(teacher), train, dev, tmp_path / "pruned", "compression.pruning.enabled=true",
        "compression.pruning.frequency=2", "compression.distillation.enabled=true",
        "compression.distillation.temperature=2", "data.label_names=[neg, pos]"))
    run_dir = run_training(cfg)
    info = json.loads((run_dir / "compression.json").read_text())
    assert info["distillation"]["enabled"] and info["distillation"]["temperature"] == 2.0
    assert info["pruning"]["overall"] == pytest.approx(0.5, abs=0.01)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 16 and np.isfinite(metrics["dev"]["loss"])
    # the teacher is neither trained nor saved: one word-embedding table in the training checkpoint
    checkpoint = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    names = [n for n, _ in tf.train.list_variables(checkpoint) if "OPTIMIZER_SLOT" not in n]
    tables = [n for n in names if n.endswith("embeddings/weight/.ATTRIBUTES/VARIABLE_VALUE")]
    heads = [n for n in names if n.endswith("classifier/kernel/.ATTRIBUTES/VARIABLE_VALUE")]
    assert len(tables) == 1 and len(heads) == 1, (tables, heads)


@pytest.mark.parametrize("extra, message", [
    (["compression.distillation.weight=1.5"], "compression.distillation.weight: must be in"),
    (["compression.distillation.temperature=0"], "compression.distillation.temperature: must be positive"),
    (["data.label_names=[pos, neg]"], r"predicts labels \['neg', 'pos'\], this run has \['pos', 'neg'\]"),
    (["compression.distillation.teacher=TINY"], "has no classifier head"),
])
def test_bad_distillation_settings_fail_with_the_key(teacher_run, tiny_checkpoint, tmp_path, extra, message):
    teacher, train, dev = teacher_run
    extra = [e.replace("TINY", tiny_checkpoint) for e in extra]
    cfg = load_config(None, tiny_overrides(str(teacher), train, dev, tmp_path / "run",
                                           "compression.distillation.enabled=true", *extra))
    with pytest.raises(TfllmError, match=message):
        run_training(cfg)
    assert not (tmp_path / "run").exists()  # nothing written before the check
