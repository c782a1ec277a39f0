"""Run by test_distributed.py (and test_pretraining.py, which reads ``weights``) in a fresh process
(logical CPU devices must be set before TF starts).

Trains the tiny BERT's masked LM for a few steps on the same global batches under the default
strategy and under MirroredStrategy over 2 logical CPUs (with 2-way accumulation inside each
replica), through tfllm's Trainer with plain SGD (see distributed_check.py), and prints both runs'
held-out metrics, per-step ``loss`` and ``grad_norm``, update norms and weight digests.
Each row is masked with a seed from its own tokens here, so both layouts see the same masks (the
production masking seeds per replica batch); what is checked is the per-masked-token weighting:
the masked-token count all-reduced across replicas and the accumulation (pass ``nsp``
as a fourth argument to add the NSP column).
"""
import json
import sys
from pathlib import Path

import tfllm  # noqa: F401
import tensorflow as tf
import tf_keras

from tfllm.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig
from tfllm.data.corpus import Corpus, encode_corpus
from tfllm.data.masking import MaskingSpec, batch_seed, mask_tokens
from tfllm.data.pipeline import BatchPlan
from tfllm.data.tokenization import load_tokenizer
from tfllm.models.masked_lm import build_masked_lm
from tfllm.training.strategy import make_strategy
from tfllm.training.trainer import SplitData, Trainer

from distributed_check import InitialWeights, step_logs, update_norms, use_sgd

MLM_RATE = 1.0  # plain SGD's constant rate: the loss falls 10.3 -> 9.1 in 5 steps; 5 diverges


def row_masking_fn(spec, seed, nsp):
    def map_fn(features, labels, weights, epoch=0):
        def one(row):
            ids, attention = row
            masked, mlm_labels = mask_tokens(ids[None], attention[None], spec, batch_seed(ids[None], seed))
            return masked[0], mlm_labels[0]

        masked, mlm_labels = tf.map_fn(one, (features["input_ids"], features["attention_mask"]),
                                       fn_output_signature=(tf.int32, tf.int32))
        y = tf.concat([mlm_labels, labels[:, None]], axis=1) if nsp else mlm_labels
        return dict(features, input_ids=masked), y, weights
    return map_fn


def run(strategy, checkpoint: str, corpus: Path, out: Path, accum: int, nsp: bool) -> dict:
    tokenizer = load_tokenizer(checkpoint)
    lines = corpus.read_text(encoding="utf-8-sig").split("\n\n")[:120]
    data = DataConfig(max_length=32, nsp=nsp)
    enc, _ = encode_corpus(tokenizer, Corpus([" ".join(x.split()) for x in lines if x.strip()], "austen"),
                           data, seed=0)
    spec = MaskingSpec.from_tokenizer(tokenizer, 0.2)
    cfg = TrainConfig(task="masked_lm", max_steps=5, batch_size=8, grad_accum_steps=accum,
                      learning_rate=MLM_RATE, log_every=1, checkpoint_every=100, restore_best=False,
                      eval_batch_size=8)
    tf_keras.utils.set_random_seed(0)
    with strategy.scope():
        model, _ = build_masked_lm(ModelConfig(checkpoint=checkpoint, hidden_dropout=0.0,
                                               attention_dropout=0.0), tokenizer, nsp=nsp,
                                   grad_accum_steps=accum, max_grad_norm=None)
    train = SplitData(enc, BatchPlan(enc.lengths, 8, seed=1), row_masking_fn(spec, 3, nsp))
    dev = SplitData(enc, BatchPlan(enc.lengths[:32], 8, shuffle=False), row_masking_fn(spec, 4, nsp))
    initial = InitialWeights()
    trainer = Trainer(model, cfg, out, strategy, step_callbacks=[initial])
    trainer.fit(train, dev)
    metrics, _ = trainer.evaluate(dev)
    return {"replicas": strategy.num_replicas_in_sync, "dev": metrics, "steps": step_logs(out),
            "updates": update_norms(model, initial)}


if __name__ == "__main__":
    # One MirroredStrategy per process: a second one reuses collective instance keys.
    checkpoint, corpus, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    nsp = len(sys.argv) > 4 and sys.argv[4] == "nsp"
    use_sgd()
    single = run(make_strategy(DistributeConfig(num_cpu_devices=2)), checkpoint, corpus,
                 out / "single", 1, nsp)
    mirrored = run(make_strategy(DistributeConfig(strategy="mirrored", num_cpu_devices=2)),
                   checkpoint, corpus, out / "mirrored", 2, nsp)
    print("RESULT " + json.dumps({"nsp" if nsp else "mlm": {"single": single, "mirrored": mirrored}}))
