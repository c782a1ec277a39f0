"""Predict labels for raw texts with a trained run: ``python -m tfllm.predict RUN_DIR "text" ...``.

Prints one JSON line per text: ``{"text": ..., "label": ..., "probabilities": {label: p}}``.

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

from tfllm.cli import main_guard, setup_logging
from tfllm.errors import TfllmError


class Classifier:
    """A trained run ready for inference: tokenizer, model, label map and max length."""

    def __init__(self, run_dir: Path, model, tokenizer, label_names: Sequence[str], max_length: int,
                 config=None):
        self.run_dir, self.model, self.tokenizer = run_dir, model, tokenizer
        self.label_names, self.max_length, self.config = list(label_names), max_length, config

    @classmethod
    def load(cls, run_dir: str | Path) -> "Classifier":
        from tfllm.config import load_config
        from tfllm.data.labels import LabelMap
        from tfllm.data.tokenization import load_tokenizer
        from tfllm.models.classifier import load_classifier

        run_dir = Path(run_dir)
        if not (run_dir / "model" / "config.json").is_file():
            raise TfllmError(f"{run_dir} is not a finished tfllm run (no model/ inside)")
        cfg = load_config(run_dir / "config.yaml")
        labels = LabelMap.load(run_dir / "label_map.json")
        return cls(run_dir, load_classifier(str(run_dir / "model")),
                   load_tokenizer(run_dir / "model"), labels.names, cfg.data.max_length, cfg)

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

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> list[dict]:
        from tfllm.models.classifier import softmax

        probabilities = softmax(self.logits(texts, pairs))
        return [{"text": text, "label": self.label_names[int(p.argmax())],
                 "probabilities": {n: round(float(q), 6) for n, q in zip(self.label_names, p)}}
                for text, p in zip(texts, probabilities)]


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


@main_guard
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.predict", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a finished run directory (runs/NAME)")
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("--input", help="a file with one text per line")
    args = parser.parse_args(argv)
    texts = list(args.texts) + (read_lines(args.input) if args.input else [])
    if not texts:
        raise TfllmError("nothing to predict: give texts or --input FILE")
    for i, text in enumerate(texts, start=1):
        if not text.strip():
            raise TfllmError(f"text {i} is empty")
    setup_logging()
    classifier = Classifier.load(args.run_dir)
    for row in classifier.predict(texts):
        print(json.dumps(row, ensure_ascii=False))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
