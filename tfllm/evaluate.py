"""Evaluate a trained run on labelled data: ``python -m tfllm.evaluate RUN_DIR --data FILE``.

``RUN_DIR`` may also be an exported ``.tflite`` model (``RUN_DIR/export/model.tflite``), run in
the LiteRT interpreter one text at a time with the metadata and tokenizer beside it, or an
exported SavedModel directory (``RUN_DIR/export/saved_model/1``, its token-id signature).

Prints and writes the task's metrics and reports to ``RUN_DIR/eval/<data name>/`` (or ``--out``):
for classification accuracy, macro-F1, scikit-learn's classification report,
``predictions.csv`` and ``confusion_matrix.png``; for the other tasks their own (Pearson /
Spearman, micro / macro-F1 with the run's thresholds, entity-level F1 by type).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tfllm import rundir
from tfllm.cli import check_choice, main_guard, parse_command_line, setup_logging
from tfllm.errors import TfllmError
from tfllm.inference import PRECISIONS, Predictor


def default_out_dir(model_path: str, data_file: str) -> Path:
    """``RUN/eval/<data stem>``; for an export, ``<export dir>/eval/<model>/<data stem>``
    (``model_int8`` for a .tflite, ``saved_model_1`` for ``saved_model/1``)."""
    path, data = Path(model_path), Path(data_file).stem
    if path.suffix == ".tflite":
        return path.parent / rundir.EVAL / path.stem / data
    if (path / "saved_model.pb").is_file():
        return path.parent.parent / rundir.EVAL / f"{path.parent.name}_{path.name}" / data
    return path / rundir.EVAL / data


@main_guard(memory_hint="lower --batch-size")
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a finished run directory, an exported .tflite model or SavedModel")
    parser.add_argument("--data", required=True, help="labelled data file (csv/tsv/jsonl/json/parquet/conll)")
    parser.add_argument("--text-column")
    parser.add_argument("--text-pair-column")
    parser.add_argument("--label-column")
    parser.add_argument("--format", default=None)
    parser.add_argument("--out", help="output directory (default RUN_DIR/eval/<data file stem>)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per batch (64)")
    parser.add_argument("--precision", default="float32",
                        help="what a run's Keras model computes in: float32 (default), bfloat16, or auto "
                        "(bfloat16 on a CPU with bf16 instructions: faster in batches, logits within ~0.01)")
    args = parse_command_line(parser, argv)
    check_choice("--precision", args.precision, PRECISIONS)
    if args.batch_size < 1:
        raise TfllmError(f"--batch-size must be at least 1, got {args.batch_size}")
    setup_logging()
    predictor = Predictor.load(args.run_dir, precision=args.precision)
    if predictor.task.name == "masked_lm":
        raise TfllmError(f"{args.run_dir} is a masked-LM run; its held-out metrics are in metrics.json")
    out = Path(args.out) if args.out else default_out_dir(args.run_dir, args.data)
    predictor.evaluate(args.data, out, text_column=args.text_column, text_pair_column=args.text_pair_column,
                       label_column=args.label_column, format=args.format, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
