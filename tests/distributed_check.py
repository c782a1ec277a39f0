"""Run by test_distributed.py in a fresh process (logical CPU devices must be set before TF starts).

Trains the tiny BERT for a few steps on the same global batches under the default strategy and
under MirroredStrategy over 2 logical CPUs (with 2-way accumulation inside each replica), through
tfllm's Trainer, and prints as JSON both runs' dev metrics, per-step ``loss`` and ``grad_norm``
(from TensorBoard) and each variable's update norm. The optimizer is plain SGD without clipping:
its update is proportional to the gradient, so a wrong reduction (a factor 2) shows in the
weights and later losses too; Adam's update is nearly scale-invariant and would hide it.

The helpers here (:func:`use_sgd`, :class:`InitialWeights`, :func:`step_logs`, :func:`update_norms`)
are shared by the other ``distributed_*_check.py`` scripts.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

import tfllm  # noqa: F401
import numpy as np
import tensorflow as tf
import tf_keras

from tfllm.config import DistributeConfig, ModelConfig, TrainConfig
from tfllm.data.pipeline import BatchPlan
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.models.classifier import build_classifier
from tfllm.training import trainer as trainer_module
from tfllm.training.strategy import make_strategy
from tfllm.training.trainer import SplitData, Trainer

SGD_RATE = 2.0  # a constant rate that moves the tiny random model; 5 already diverges


def sgd(learning_rate, total_steps, *args, loss_scale=False, **kwargs):
    """``make_optimizer``'s signature, returning plain SGD at a constant rate."""
    optimizer = tf_keras.optimizers.SGD(learning_rate)
    return tf_keras.mixed_precision.LossScaleOptimizer(optimizer) if loss_scale else optimizer


def use_sgd() -> None:
    """Make the Trainer build :func:`sgd` instead of AdamW (this process only)."""
    trainer_module.make_optimizer = sgd


class InitialWeights:
    """Trainer step callback keeping the trainable weights as they were before the first step."""

    def __init__(self):
        self.values = None

    def __call__(self, trainer, step: int) -> None:
        if step == 0:
            self.values = [v.numpy().copy() for v in trainer.model.trainable_variables]


def update_norms(model, initial: InitialWeights) -> list:
    """The norm of each trainable variable's change over the run."""
    return [float(np.linalg.norm(v.numpy() - w0)) for v, w0 in zip(model.trainable_variables,
                                                                  initial.values, strict=True)]


def step_logs(run_dir: Path, tags=("loss", "grad_norm")) -> dict:
    """``{tag: [value at step 1, 2, ...]}`` from the run's TensorBoard ``train`` scalars."""
    found = defaultdict(dict)
    for event_file in sorted((Path(run_dir) / "tensorboard" / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                if value.tag in tags:
                    found[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
    return {tag: [found[tag][s] for s in sorted(found[tag])] for tag in tags}


def run(strategy, checkpoint: str, out: Path, accum: int) -> dict:
    tokenizer = load_tokenizer(checkpoint)
    texts = [f"sample {i} " + "more words " * (i % 5) for i in range(40)]
    enc = encode_texts(tokenizer, texts, max_length=32, labels=np.arange(40, dtype=np.int32) % 2)
    cfg = TrainConfig(max_steps=6, batch_size=8, grad_accum_steps=accum, learning_rate=SGD_RATE,
                      log_every=1, checkpoint_every=100, restore_best=False, eval_batch_size=8)
    tf_keras.utils.set_random_seed(0)
    with strategy.scope():
        model, _ = build_classifier(ModelConfig(checkpoint=checkpoint, hidden_dropout=0.0,
                                                attention_dropout=0.0, classifier_dropout=0.0),
                                    num_labels=2, grad_accum_steps=accum, max_grad_norm=None)
    train = SplitData(enc, BatchPlan(enc.lengths, 8, seed=1))
    dev = SplitData(enc, BatchPlan(enc.lengths, 8, shuffle=False))
    initial = InitialWeights()
    trainer = Trainer(model, cfg, out, strategy, step_callbacks=[initial])
    state = trainer.fit(train, dev)
    metrics, _ = trainer.evaluate(dev)
    return {"replicas": strategy.num_replicas_in_sync, "dev": metrics, "steps": step_logs(out),
            "updates": update_norms(model, initial), "history": state.history}


if __name__ == "__main__":
    checkpoint, out = sys.argv[1], Path(sys.argv[2])
    use_sgd()
    single = run(make_strategy(DistributeConfig(num_cpu_devices=2)), checkpoint, out / "single", 1)
    mirrored = run(make_strategy(DistributeConfig(strategy="mirrored", num_cpu_devices=2)),
                   checkpoint, out / "mirrored", 2)
    print("RESULT " + json.dumps({"single": single, "mirrored": mirrored}))
