"""Run by test_distributed.py in a fresh process (logical CPU devices must be set before TF starts).

Trains the tiny BERT for a few steps on the same global batches under the default strategy and
under MirroredStrategy over 2 logical CPUs, through tfllm's Trainer, and prints both runs'
losses and final weights digest as JSON.
"""
import json
import sys
from pathlib import Path

import tfllm  # noqa: F401
import numpy as np
import tf_keras

from tfllm.config import DistributeConfig, ModelConfig, TrainConfig
from tfllm.data.pipeline import BatchPlan
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.models.classifier import build_classifier
from tfllm.training.strategy import make_strategy
from tfllm.training.trainer import SplitData, Trainer


def run(strategy, checkpoint: str, out: Path, accum: int) -> dict:
    tokenizer = load_tokenizer(checkpoint)
    texts = [f"sample {i} " + "more words " * (i % 5) for i in range(40)]
    enc = encode_texts(tokenizer, texts, max_length=32, labels=np.arange(40, dtype=np.int32) % 2)
    cfg = TrainConfig(max_steps=6, batch_size=8, grad_accum_steps=accum, learning_rate=1e-3,
                      log_every=1, checkpoint_every=100, restore_best=False, eval_batch_size=8)
    tf_keras.utils.set_random_seed(0)
    with strategy.scope():
        model, _ = build_classifier(ModelConfig(checkpoint=checkpoint, hidden_dropout=0.0,
                                                attention_dropout=0.0, classifier_dropout=0.0),
                                    num_labels=2, grad_accum_steps=accum, max_grad_norm=1.0)
    train = SplitData(enc, BatchPlan(enc.lengths, 8, seed=1))
    dev = SplitData(enc, BatchPlan(enc.lengths, 8, shuffle=False))
    trainer = Trainer(model, cfg, out, strategy)
    state = trainer.fit(train, dev)
    metrics, _ = trainer.evaluate(dev)
    return {"replicas": strategy.num_replicas_in_sync, "dev": metrics,
            "weights": [float(np.sum(np.abs(v.numpy()))) for v in model.trainable_variables],
            "history": state.history}


if __name__ == "__main__":
    checkpoint, out = sys.argv[1], Path(sys.argv[2])
    single = run(make_strategy(DistributeConfig(num_cpu_devices=2)), checkpoint, out / "single", 1)
    mirrored = run(make_strategy(DistributeConfig(strategy="mirrored", num_cpu_devices=2)),
                   checkpoint, out / "mirrored", 2)
    print("RESULT " + json.dumps({"single": single, "mirrored": mirrored}))
