"""Predict with a trained run (any task): ``python -m tfllm.predict RUN_DIR "text" ...``.

Prints one JSON line per text, shaped by the run's task:

* classification: ``{"text", "label", "probabilities": {label: p}}``
* regression: ``{"text", "score"}``; multi_label: ``{"text", "labels": [...], "probabilities"}``
* token_classification: ``{"text", "entities": [{"entity", "text", "start", "end"}]}``
  (character offsets into the text)
* masked_lm, with ``--fill-mask "the movie was [MASK] ."``: one line per [MASK] with the top-k
  (``--top-k``) tokens ``{"text", "mask", "predictions": [{"token", "probability"}]}``

Sentence-pair runs take ``first<TAB>second``. ``RUN_DIR`` may also be an exported ``.tflite``.

    >>> Predictor.load("runs/sentiment_minilm").predict(["a warm, funny film"])[0]["label"]
    'positive'
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tfllm.cli import check_choice, main_guard, parse_command_line, setup_logging
from tfllm.data.readers import read_text
from tfllm.errors import TfllmError
from tfllm.inference import PRECISIONS, Predictor
from tfllm.tasks.base import split_pairs


def read_lines(path: str) -> list[str]:
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


@main_guard(memory_hint="lower --batch-size")
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.predict", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a finished run directory (runs/NAME) or an exported .tflite")
    parser.add_argument("texts", nargs="*", help="texts to predict")
    parser.add_argument("--input", help="a file with one text per line")
    parser.add_argument("--fill-mask", action="append", default=[], metavar="TEXT",
                        help="masked-LM runs: the top-k tokens for each [MASK] in TEXT (repeatable; "
                             "texts and --input lines are filled too)")
    parser.add_argument("--top-k", type=int, default=5, help="with --fill-mask: tokens per [MASK] (5)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per batch (64)")
    parser.add_argument("--precision", default="float32",
                        help="what a run's Keras model computes in: float32 (default), bfloat16, or auto "
                        "(bfloat16 on a CPU with bf16 instructions: faster in batches, logits within ~0.01)")
    args = parse_command_line(parser, argv)
    check_choice("--precision", args.precision, PRECISIONS)
    if args.batch_size < 1:
        raise TfllmError(f"--batch-size must be at least 1, got {args.batch_size}")
    texts = list(args.fill_mask) + list(args.texts) + (read_lines(args.input) if args.input else [])
    if not texts:
        raise TfllmError("nothing to predict: give texts or --input FILE")
    for i, text in enumerate(texts, start=1):
        if not text.strip():
            raise TfllmError(f"text {i} is empty")
    if args.top_k < 1:
        raise TfllmError(f"--top-k must be at least 1, got {args.top_k}")
    setup_logging()
    predictor = Predictor.load(args.run_dir, precision=args.precision)
    if args.fill_mask and predictor.task.name != "masked_lm":
        raise TfllmError(f"{args.run_dir} is a {predictor.task.name} run: --fill-mask needs a "
                         "masked_lm run")
    if predictor.task.name == "masked_lm" and not args.fill_mask:
        raise TfllmError(f"{args.run_dir} is a masked-LM run, not a classifier: use --fill-mask "
                         '"text with [MASK]"')
    predictor.task.top_k = args.top_k
    texts, pairs = split_pairs(texts, predictor.pair_task)
    for row in predictor.predict(texts, pairs, args.batch_size):
        print(json.dumps(row, ensure_ascii=False))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
