"""The PyTorch peer of benchmarks/speed.py: the Hugging Face ``Trainer`` on the same data and model.

Runs in its own virtual environment (torch must never enter tfllm's), made by
``benchmarks/peer_setup.sh``; ``benchmarks/speed.py`` calls it as a subprocess:

    .venv-peer/bin/python benchmarks/peer_torch.py finetune --checkpoint DIR --train slice.tsv \
        [--bf16] [--group-by-length]
    .venv-peer/bin/python benchmarks/peer_torch.py predict --checkpoint DIR --dev dev.tsv
    .venv-peer/bin/python benchmarks/peer_torch.py mlm --checkpoint DIR --corpus blocks.txt --steps N

Each job prints one JSON line (``PEER {...}``) with its throughput. Everything is what a user of
the PyTorch stack would write from the Hugging Face docs: ``AutoTokenizer``, ``Trainer`` with
``TrainingArguments`` (AdamW, linear warm-up/decay, clipping at 1.0, the same learning rate, weight
decay and epsilon as tfllm's config), ``DataCollatorWithPadding`` (the Trainer's default) or
``DataCollatorForLanguageModeling``. A ``TrainerCallback`` timestamps every step; the rate is taken
after the first step (which builds the optimizer and warms the allocator), as for tfllm.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time

import torch
import transformers
from transformers import (AutoTokenizer, BertForMaskedLM, BertForSequenceClassification,
                          DataCollatorForLanguageModeling, DataCollatorWithPadding, Trainer,
                          TrainerCallback, TrainingArguments)

SEED = 42


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self):
        self.ends: list[float] = []
        self.start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is None:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def rate(self, items_per_step: float, skip: int = 1) -> float:
        steps = len(self.ends) - skip
        return steps * items_per_step / (self.ends[-1] - self.ends[skip - 1])


class Rows(torch.utils.data.Dataset):
    """A list of feature dicts (what ``Trainer`` accepts besides ``datasets.Dataset``)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def read_tsv(path: str) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> Rows:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    rows = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
    if labels is not None:
        for row, label in zip(rows, labels):
            row["labels"] = label
    return Rows(rows)


def arguments(out: str, batch: int, bf16: bool, group_by_length: bool, args) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch, per_device_eval_batch_size=args.eval_batch,
        num_train_epochs=1, max_steps=args.steps or -1, learning_rate=args.lr, warmup_ratio=0.06,
        weight_decay=0.01, adam_epsilon=1e-6, max_grad_norm=1.0, bf16=bf16,
        group_by_length=group_by_length, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to=[], seed=SEED, data_seed=SEED, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True)


def finetune(args) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    texts, labels = read_tsv(args.train)
    data = encode(tokenizer, texts, labels, args.max_length)
    model = BertForSequenceClassification.from_pretrained(args.checkpoint, num_labels=2)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=arguments(out, args.batch, args.bf16, args.group_by_length, args),
                          train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                          callbacks=[clock])
        trainer.train()
    return {"seq_per_s": clock.rate(args.batch), "steps": len(clock.ends),
            "first_step_s": clock.ends[0] - clock.start}


def predict(args) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    texts, labels = read_tsv(args.dev)
    data = encode(tokenizer, texts, labels, args.max_length)
    model = BertForSequenceClassification.from_pretrained(args.checkpoint, num_labels=2)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=arguments(out, args.batch, args.bf16, False, args),
                          data_collator=DataCollatorWithPadding(tokenizer))
        trainer.predict(Rows(data.rows[:args.eval_batch]))  # warm-up, not timed
        start = time.perf_counter()
        output = trainer.predict(data)
        seconds = time.perf_counter() - start
    predictions = output.predictions.argmax(-1)
    return {"seq_per_s": len(data) / seconds, "seconds": seconds, "examples": len(data),
            "predicted_positive": int(predictions.sum())}


def mlm(args) -> dict:
    """Blocks of ``max_length`` token ids (one block a line, written by speed.py from tfllm's own
    blocking of the corpus), 15% masking by ``DataCollatorForLanguageModeling``."""
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    with open(args.corpus, encoding="utf-8") as f:
        blocks = [[int(t) for t in line.split()] for line in f if line.strip()]
    data = Rows([{"input_ids": b} for b in blocks])
    model = BertForMaskedLM.from_pretrained(args.checkpoint)
    clock = StepClock()
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=arguments(out, args.batch, args.bf16, False, args),
                          train_dataset=data, data_collator=collator, callbacks=[clock])
        trainer.train()
    tokens = args.batch * len(blocks[0])
    return {"tokens_per_s": clock.rate(tokens), "seq_per_s": clock.rate(args.batch), "steps": len(clock.ends)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("job", choices=["finetune", "predict", "mlm"])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--train")
    parser.add_argument("--dev")
    parser.add_argument("--corpus")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=66)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=0, help="max_steps (0: one epoch)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--group-by-length", action="store_true")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(SEED)
    result = {"finetune": finetune, "predict": predict, "mlm": mlm}[args.job](args)
    result.update(torch=torch.__version__, transformers=transformers.__version__,
                  threads=torch.get_num_threads(), python=platform.python_version(),
                  bf16=args.bf16, group_by_length=args.group_by_length,
                  onednn=torch.backends.mkldnn.is_available(), pid=os.getpid())
    print("PEER " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
