"""Run by test_distributed.py in a fresh process (logical CPU devices must be set before TF starts).

Trains the tiny BERT classifier for a few steps on the same global batches on one device and under
MirroredStrategy over 2 logical CPUs, through tfllm's Trainer with the production AdamW, three
ways: with QAT (dropout off), with pruning (dropout off) and plain with dropout on. Prints as
JSON each run's per-step ``loss`` and ``grad_norm``, update norms, and the QAT ranges or the
pruning masks, plus the errors QAT and pruning give for gradient accumulation with 2 replicas.
One MirroredStrategy serves all (a second one per process reuses collective instance keys).
"""
import json
import sys
from pathlib import Path

import tfllm  # noqa: F401
import numpy as np
import tf_keras

from tfllm.compression import pruning, qat
from tfllm.config import DistributeConfig, ModelConfig, PruningConfig, TrainConfig
from tfllm.data.pipeline import BatchPlan
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.errors import TfllmError
from tfllm.models.classifier import build_classifier
from tfllm.training.strategy import make_strategy
from tfllm.training.trainer import SplitData, Trainer

from distributed_check import InitialWeights, step_logs, update_norms

STEPS = 4
GROUPS = ["feed_forward"]  # fewer wrappers to trace; the attention ones are the same classes


def classifier(checkpoint: str, dropout: float, accum: int = 1):
    tf_keras.utils.set_random_seed(0)
    cfg = ModelConfig(checkpoint=checkpoint, hidden_dropout=dropout, attention_dropout=dropout,
                      classifier_dropout=dropout)
    return build_classifier(cfg, num_labels=2, grad_accum_steps=accum, max_grad_norm=1.0)[0]


def with_qat(model):
    wrapped = qat.wrap(model, GROUPS)
    return wrapped, [], lambda: qat.ranges(wrapped.bert, GROUPS)


def with_pruning(model):
    cfg = PruningConfig(enabled=True, target_sparsity=0.5, begin_step=0, end_step=STEPS - 1,
                        frequency=1, layers=GROUPS)
    wrapped = pruning.wrap(model, cfg, STEPS)
    masks = lambda: {"masks": [m.numpy().tolist() for m in wrapped.pruning_masks]}  # noqa: E731
    return wrapped, [pruning.PruningHook(wrapped, log_every=1)], masks


def plain(model):
    return model, [], dict


def run(strategy, checkpoint: str, out: Path, wrap, dropout: float = 0.0) -> dict:
    tokenizer = load_tokenizer(checkpoint)
    texts = [f"sample {i} " + "more words " * (i % 5) for i in range(40)]
    enc = encode_texts(tokenizer, texts, max_length=32, labels=np.arange(40, dtype=np.int32) % 2)
    cfg = TrainConfig(max_steps=STEPS, batch_size=8, learning_rate=1e-3, warmup_ratio=0.0,
                      log_every=1, checkpoint_every=100, restore_best=False,
                      fused_optimizer=False)  # Keras' update on both sides: the comparison is of distribution
    with strategy.scope():
        model, hooks, extra = wrap(classifier(checkpoint, dropout))
    initial = InitialWeights()
    trainer = Trainer(model, cfg, out, strategy, step_callbacks=[initial, *hooks])
    trainer.fit(SplitData(enc, BatchPlan(enc.lengths, 8, seed=1)), None)
    for hook in hooks:
        hook.close(STEPS)
    return {"replicas": strategy.num_replicas_in_sync, "steps": step_logs(out),
            "updates": update_norms(model, initial), **extra()}


def accumulation_error(strategy, checkpoint: str, wrap) -> str:
    """The error ``wrap`` raises for a model with 2-way gradient accumulation under ``strategy``."""
    with strategy.scope():
        try:
            wrap(classifier(checkpoint, 0.0, accum=2))
        except TfllmError as e:
            return str(e)
    return "no error"


if __name__ == "__main__":
    checkpoint, out = sys.argv[1], Path(sys.argv[2])
    tf_keras.backend.experimental.enable_tf_random_generator()  # as tfllm.train does
    single = make_strategy(DistributeConfig(num_cpu_devices=2))
    mirrored = make_strategy(DistributeConfig(strategy="mirrored", num_cpu_devices=2))
    runs = {"qat": (with_qat, 0.0), "pruning": (with_pruning, 0.0), "dropout": (plain, 0.1)}
    result = {name: {"single": run(single, checkpoint, out / name / "single", wrap, dropout),
                     "mirrored": run(mirrored, checkpoint, out / name / "mirrored", wrap, dropout)}
              for name, (wrap, dropout) in runs.items()}
    result["accumulation_errors"] = {name: accumulation_error(mirrored, checkpoint, wrap)
                                     for name, wrap in [("qat", with_qat), ("pruning", with_pruning)]}
    print("RESULT " + json.dumps(result))
