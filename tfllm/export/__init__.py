"""Export a finished run for deployment: ``python -m tfllm.export RUN_DIR --format tflite|saved_model``.

``--format tflite --quantize none|dynamic|float16|int8|qat|all`` writes ``RUN_DIR/export/
model[_MODE].tflite`` with ``model[_MODE].json`` (labels, max length, input names and dtypes) and
the tokenizer files (``vocab.txt`` ...), so an app can run it without Python. int8 calibrates on
examples drawn from the run's training data (or ``--calibration-data FILE``); qat uses the ranges
learned by a ``compression.qat`` run. ``--format saved_model`` writes ``RUN_DIR/export/
saved_model/1`` whose ``serving_default`` takes raw strings (tokenisation in the graph, needs
tensorflow-text) and ``RUN_DIR/export/saved_model_ids/1`` (token ids, plain TensorFlow).
``--report`` then compares every variant (as ``python -m tfllm.compare``).
"""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from tfllm.cli import MACHINE_MEMORY_HINT, main_guard, parse_command_line, setup_logging
from tfllm.errors import TfllmError

FORMATS = ("tflite", "saved_model")


def export(run_dir, fmt: str = "tflite", quantize: str = "none", out_dir=None, calibration_data=None) -> list[Path]:
    """Export ``run_dir``; returns the written model paths (several for ``quantize="all"``)."""
    # Imported here, not at the top: this package's __init__ is also the CLI (``--help`` stays
    # fast), and ``tfllm.export.tflite`` is imported by tfllm.inference through this package.
    from tfllm.compression import read_compression
    from tfllm.export.saved_model import export_saved_model
    from tfllm.export.tflite import MODES, check_mode, export_tflite
    from tfllm.runs import load_run

    if fmt not in FORMATS:
        close = difflib.get_close_matches(fmt, FORMATS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TfllmError(f"unknown --format {fmt!r}{hint}; choose from {', '.join(FORMATS)}")
    modes = [check_mode(quantize)] if quantize != "all" else None
    if fmt == "saved_model" and quantize != "none":
        raise TfllmError("--quantize applies to --format tflite only")
    run = load_run(run_dir)
    if fmt == "saved_model":
        return export_saved_model(run, out_dir)
    if modes is None:
        modes = [m for m in MODES if m != "qat" or "qat" in read_compression(Path(run_dir))]
    return [export_tflite(run, mode, out_dir, calibration_data) for mode in modes]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a finished run directory (runs/NAME)")
    parser.add_argument("--format", default="tflite", help="tflite (default) or saved_model")
    parser.add_argument("--quantize", default="none",
                        help="tflite only: none, dynamic, float16, int8, qat or all (default none)")
    parser.add_argument("--out", help="output directory (default RUN_DIR/export)")
    parser.add_argument("--calibration-data", help="int8: data file to calibrate on (default: the "
                        "run's training data)")
    parser.add_argument("--report", action="store_true", help="then compare every exported variant")
    parser.add_argument("--verbose", action="store_true", help="show library logs")
    return parse_command_line(parser, argv)


@main_guard(memory_hint=MACHINE_MEMORY_HINT)
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    paths = export(args.run_dir, args.format, args.quantize, args.out, args.calibration_data)
    for path in paths:
        print(f"wrote {path}")
    if args.report:
        from tfllm.compare import compare_run, print_report

        print_report(compare_run(args.run_dir, export_dir=args.out, calibration_data=args.calibration_data))
