"""Reductions that a scale-invariant optimizer would hide: gradient accumulation and loss scaling.

Adam's update barely changes when every gradient is doubled, so these checks use plain SGD
without clipping (its update is the gradient times the rate) and compare each step's ``loss``
and ``grad_norm`` as well as the weights' updates.
"""
import json

import numpy as np
import tensorflow as tf
import tf_keras

from conftest import tiny_overrides
from distributed_check import step_logs
from tfllm.config import ModelConfig, load_config
from tfllm.data.pipeline import BatchPlan, make_dataset
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.models.classifier import build_classifier
from tfllm.train import run_training
from tfllm.training.optimization import make_optimizer

SGD_RATE = 5.0  # moves the tiny random model's loss visibly in one step


def batches(checkpoint, n: int = 32, batch_size: int = 16) -> list:
    tokenizer = load_tokenizer(checkpoint)
    texts = [f"example number {i} " + "word " * (i % 7) for i in range(n)]
    enc = encode_texts(tokenizer, texts, max_length=32, labels=np.arange(n, dtype=np.int32) % 2)
    return list(make_dataset(enc, BatchPlan(enc.lengths, batch_size, seed=0), epochs=1))


def classifier(checkpoint, optimizer, **kwargs):
    cfg = ModelConfig(checkpoint=checkpoint, hidden_dropout=0.0, attention_dropout=0.0,
                      classifier_dropout=0.0)
    tf_keras.utils.set_random_seed(0)
    model, _ = build_classifier(cfg, num_labels=2, **kwargs)
    model.compile(optimizer=optimizer)
    return model


def train(model, data) -> dict:
    """Per-step logs of ``model.train_step`` over ``data`` and each variable's update norm."""
    initial = [v.numpy().copy() for v in model.trainable_variables]
    logs = [model.train_step(batch) for batch in data]
    steps = {key: [float(step[key]) for step in logs] for key in logs[0]}
    updates = [float(np.linalg.norm(v.numpy() - w)) for v, w in zip(model.trainable_variables, initial)]
    return {"steps": steps, "updates": updates}


def test_gradient_accumulation_equals_one_large_batch(tiny_checkpoint):
    data = batches(tiny_checkpoint)
    runs = {accum: train(classifier(tiny_checkpoint, tf_keras.optimizers.SGD(SGD_RATE),
                                    grad_accum_steps=accum), data)
            for accum in (1, 4, 3)}  # 3 does not divide 16: the last micro-batch is smaller
    for accum in (4, 3):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(runs[accum]["steps"][key], runs[1]["steps"][key], rtol=1e-4,
                                       err_msg=f"{accum}-way accumulation, per-step {key}")
        np.testing.assert_allclose(runs[accum]["updates"], runs[1]["updates"], rtol=1e-3, atol=1e-8,
                                   err_msg=f"{accum}-way accumulation, update norms")


def unscaled_grad_norm(model, batch) -> float:
    """The gradient norm of ``model``'s weighted loss without loss scaling."""
    features, labels, weights = batch
    with tf.GradientTape() as tape:
        per_example, _ = model.per_example_loss(features, labels, training=True)
        loss = tf.reduce_sum(tf.cast(per_example, tf.float32) * weights)
    return float(tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables)))


def test_mixed_float16_scales_the_loss_and_unscales_the_gradients(tiny_checkpoint):
    """Loss scaling ran: the LossScaleOptimizer's scale (2^15) is logged, and the float16 step's
    grad_norm (unscaled) is the float32 step's. The sample weights are 1e-7 of the mean's, so
    without the scale every float16 gradient underflows to 0 (checked at the end). Even scaled,
    many of those gradients are float16 subnormals (steps of 6e-8), so the norm is only good to a
    few percent, and how it rounds depends on the CPU's float16 kernels (4.7% off on one CI
    machine): 10% still tells a scaled step from an unscaled (0) or a never-unscaled (x 2^15) one."""
    features, labels, weights = batches(tiny_checkpoint)[0]
    small = (features, labels, weights * 1e-7)
    reference = train(classifier(tiny_checkpoint, make_optimizer(1e-3, 10)), [small])["steps"]
    try:
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
        model = classifier(tiny_checkpoint, make_optimizer(1e-3, 10, loss_scale=True))
        scaled = train(model, [small])["steps"]
        without_scaling = unscaled_grad_norm(model, small)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert scaled["loss_scale"] == [2.0 ** 15] and "loss_scale" not in reference
    np.testing.assert_allclose(scaled["grad_norm"], reference["grad_norm"], rtol=0.1,
                               err_msg="float16 grad_norm (unscaled) vs float32")
    np.testing.assert_allclose(scaled["loss"], reference["loss"], rtol=1e-3)
    assert without_scaling == 0.0  # every float16 gradient underflowed


def test_mixed_float16_run_logs_its_loss_scale(tiny_checkpoint, sentiment_files, tmp_path):
    train_file, dev = sentiment_files
    try:
        run_dir = run_training(load_config(None, tiny_overrides(
            tiny_checkpoint, train_file, dev, tmp_path / "run", "train.mixed_precision=mixed_float16",
            "train.epochs=1")))
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert json.loads((run_dir / "run_info.json").read_text())["precision"] == "mixed_float16"
    assert np.isfinite(json.loads((run_dir / "metrics.json").read_text())["dev"]["loss"])
    logged = step_logs(run_dir, tags=("loss_scale", "grad_norm"))
    assert logged["loss_scale"] and min(logged["loss_scale"]) > 1
    assert len(logged["grad_norm"]) == len(logged["loss_scale"])
