"""Predict labels for raw texts with a trained run: ``python -m tfllm.predict RUN_DIR "text" ...``.

Prints one JSON line per text: ``{"text": ..., "label": ..., "probabilities": {label: p}}``.
For a masked-LM run, ``--fill-mask "the movie was [MASK] ."`` prints the top-k (``--top-k``)
tokens for each [MASK]: ``{"text": ..., "mask": 1, "predictions": [{"token": ..., "probability": p}]}``.

    >>> clf = Classifier.load("runs/sentiment_minilm")
    >>> clf.predict(["a warm, funny film"])[0]["label"]
    'positive'
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfllm.cli import main_guard, parse_command_line, setup_logging
from tfllm.errors import TfllmError


class Classifier:
    """A trained run ready for inference: tokenizer, model, label map and max length."""

    def __init__(self, run_dir: Path, model, tokenizer, label_names: Sequence[str], max_length: int,
                 config=None):
        self.run_dir, self.model, self.tokenizer = run_dir, model, tokenizer
        self.label_names, self.max_length, self.config = list(label_names), max_length, config

    @classmethod
    def load(cls, run_dir: str | Path) -> "Classifier":
        """A classification run, loaded by :func:`tfllm.export.tflite.load_run` (which checks it)."""
        from tfllm.config import load_config
        from tfllm.export.tflite import load_run

        run_dir = Path(run_dir)
        if not (run_dir / "model" / "config.json").is_file():
            raise TfllmError(f"{run_dir} is not a finished tfllm run (no model/ inside)")
        if load_config(run_dir / "config.yaml").train.task == "masked_lm":
            raise TfllmError(f"{run_dir} is a masked-LM run, not a classifier: use --fill-mask "
                             '"text with [MASK]"')
        cfg, labels, tokenizer, model = load_run(run_dir)
        from tfllm.models.classifier import BertClassifier

        return cls(run_dir, BertClassifier(model, len(labels)), tokenizer, labels,
                   cfg.data.max_length, cfg)

    def logits(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
               batch_size: int = 64) -> np.ndarray:
        """Logits in input order; batches are length-sorted so padding stays small."""
        from tfllm.data.pipeline import BatchPlan, make_dataset
        from tfllm.data.tokenization import encode_texts

        encoded = encode_texts(self.tokenizer, texts, pairs, self.max_length)
        plan = BatchPlan(encoded.lengths, batch_size, shuffle=False, bucketing=True)
        order = np.concatenate(plan.epoch(0))
        outputs = self.model.predict(make_dataset(encoded, plan, epochs=1), verbose=0)
        logits = np.empty_like(outputs)
        logits[order] = outputs
        return logits

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                batch_size: int = 64) -> list[dict]:
        from tfllm.models.classifier import softmax

        probabilities = softmax(self.logits(texts, pairs, batch_size))
        rows = []
        for i, (text, p) in enumerate(zip(texts, probabilities)):
            row = {"text": text} if pairs is None else {"text": text, "text_pair": pairs[i]}
            row.update(label=self.label_names[int(p.argmax())],
                       probabilities={n: round(float(q), 6) for n, q in zip(self.label_names, p)})
            rows.append(row)
        return rows


def read_lines(path: str) -> list[str]:
    from tfllm.data.readers import read_text

    file = Path(path)
    if not file.is_file():
        raise TfllmError(f"input file not found: {path}")
    lines = [line.strip() for line in read_text(file).splitlines()]
    for number, line in enumerate(lines, start=1):
        if not line:
            raise TfllmError(f"{path} line {number}: empty text")
    if not lines:
        raise TfllmError(f"{path}: file is empty")
    return lines


def fill_mask_main(args) -> None:
    """``--fill-mask``: one JSON line per [MASK]: ``{"text", "mask", "predictions": [{token, probability}]}``."""
    from tfllm.models.masked_lm import MaskFiller

    texts = list(args.fill_mask) + list(args.texts) + (read_lines(args.input) if args.input else [])
    for i, text in enumerate(texts, start=1):
        if not text.strip():
            raise TfllmError(f"text {i} is empty")
    if args.top_k < 1:
        raise TfllmError(f"--top-k must be at least 1, got {args.top_k}")
    setup_logging()
    for row in MaskFiller.load(args.run_dir).fill(texts, top_k=args.top_k):
        print(json.dumps(row, ensure_ascii=False))
    sys.stdout.flush()


@main_guard(memory_hint="lower --batch-size")
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.predict", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a finished run directory (runs/NAME)")
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("--input", help="a file with one text per line")
    parser.add_argument("--fill-mask", action="append", default=[], metavar="TEXT",
                        help="masked-LM runs: the top-k tokens for each [MASK] in TEXT (repeatable; "
                             "texts and --input lines are filled too)")
    parser.add_argument("--top-k", type=int, default=5, help="with --fill-mask: tokens per [MASK] (5)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per batch (64)")
    args = parse_command_line(parser, argv)
    if args.batch_size < 1:
        raise TfllmError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.fill_mask:
        return fill_mask_main(args)
    texts = list(args.texts) + (read_lines(args.input) if args.input else [])
    if not texts:
        raise TfllmError("nothing to predict: give texts or --input FILE")
    for i, text in enumerate(texts, start=1):
        if not text.strip():
            raise TfllmError(f"text {i} is empty")
    setup_logging()
    classifier = Classifier.load(args.run_dir)
    pairs = None
    if classifier.config.data.text_pair_column:  # a sentence-pair run: "first<TAB>second"
        split = [text.split("\t", 1) for text in texts]
        for i, parts in enumerate(split, start=1):
            if len(parts) != 2 or not parts[1].strip():
                raise TfllmError(f"text {i}: this run classifies sentence pairs; give 'first<TAB>second'")
        texts, pairs = [p[0] for p in split], [p[1] for p in split]
    for row in classifier.predict(texts, pairs, args.batch_size):
        print(json.dumps(row, ensure_ascii=False))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
