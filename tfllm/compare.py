"""Compare a run's deployment variants: ``python -m tfllm.compare RUN_DIR [--data FILE]``.

One row per variant - the FP32 Keras model and every TFLite export (float32, dynamic-range,
float16, full int8, and QAT int8 for a QAT run; missing ones are exported first) - with file size,
gzip size, sparsity of the encoder kernels, accuracy / macro-F1 on the dev set (or ``--data``),
latency p50/p95 at batch 1 on CPU (each text at its own length, no padding) and the agreement of
its predictions with the FP32 Keras model. Prints a Markdown table and saves
``RUN_DIR/export/report.md`` and ``report.json``.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tfllm import io, rundir
from tfllm.cli import MACHINE_MEMORY_HINT, main_guard, parse_command_line, setup_logging
from tfllm.compression import read_compression
from tfllm.compression.ptq import encode_one
from tfllm.compression.pruning import summary
from tfllm.data.labels import LabelMap
from tfllm.data.readers import read_json
from tfllm.data.splits import load_labelled_splits
from tfllm.errors import TfllmError
from tfllm.export.tflite import MODES, check_mode, export_tflite, file_digest, model_filename, serving_function
from tfllm.inference import Predictor
from tfllm.runs import load_run
from tfllm.tasks.classification import accuracy_and_macro_f1

log = logging.getLogger("tfllm")


def file_sizes(path: Path) -> tuple[int, int]:
    """``(bytes, gzip -6 bytes)`` of a file."""
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=6))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def time_calls(call: Callable, inputs: Sequence, warmup: int = 3) -> list[float]:
    """Wall time (ms) of ``call(x)`` for each input after ``warmup`` untimed calls."""
    for x in list(inputs)[:warmup]:
        call(x)
    times = []
    for x in inputs:
        start = time.perf_counter()
        call(x)
        times.append((time.perf_counter() - start) * 1000)
    return times


def keras_batch1(hf_model) -> Callable:
    """The FP32 Keras model as a batch-1 function with the TFLite export's signature (fair timing)."""

    serve = serving_function(hf_model)
    return lambda features: serve(**features)["logits"].numpy()[0]


def eval_examples(task, data: Optional[str], max_examples: Optional[int], labels):
    """``(texts, pairs, label ids, source)`` of the dev set or ``data``."""

    cfg = task.cfg
    examples = task.read_labelled(data) if data else load_labelled_splits(cfg.data, cfg.train.seed).dev
    if max_examples and len(examples) > max_examples:
        examples = examples.subset(range(max_examples))
    ids = LabelMap(tuple(labels)).encode(examples.labels, examples.source)
    return examples.texts, examples.pairs, ids, examples.source


def row_metrics(logits: np.ndarray, labels: np.ndarray, reference: Optional[np.ndarray]) -> dict:

    predicted = logits.argmax(-1)
    out = {**accuracy_and_macro_f1(predicted, labels, logits.shape[-1]),
           "predictions": predicted.tolist()}  # per example, for paired comparisons across variants
    if reference is not None:
        out["agreement"] = float(np.mean(predicted == reference.argmax(-1)))
    return out


def export_is_current(path: Path, run_dir: Path, cfg, mode: str) -> bool:
    """Whether ``path`` was exported from the run's current model with its current int8 settings."""

    meta_file = path.with_suffix(".json")
    if not path.is_file() or not meta_file.is_file():
        return False
    if path.stat().st_mtime < (run_dir / rundir.MODEL / "tf_model.h5").stat().st_mtime:
        return False
    try:
        meta = read_json(meta_file)
    except TfllmError:  # unreadable metadata: export again (it replaces both files)
        return False

    wanted = list(cfg.compression.int8.float_ops) if mode == "int8" else None
    return (isinstance(meta, dict) and meta.get("float_ops") == wanted
            and meta.get("sha256") in (None, file_digest(path)))  # not a half-done export


def compare_run(run_dir, data: Optional[str] = None, max_examples: Optional[int] = None,
                latency_examples: int = 100, modes: Optional[Sequence[str]] = None,
                export_dir: Optional[str] = None, calibration_data: Optional[str] = None,
                num_threads: Optional[int] = None, name: Optional[str] = None, write: bool = True) -> dict:
    """Evaluate every variant of one run; returns ``{"rows": [...], ...}`` (and writes the report)."""

    run_dir = Path(run_dir)
    num_threads = num_threads or os.cpu_count()  # as TensorFlow uses every core for the Keras row
    run = load_run(run_dir, "classification")
    cfg, labels, tokenizer, hf_model = run.cfg, run.task.label_names, run.tokenizer, run.hf_model
    out_dir = Path(export_dir) if export_dir else run_dir / "export"
    compression = read_compression(run_dir)
    if modes is None:
        modes = [m for m in MODES if m != "qat" or "qat" in compression]
    texts, pairs, y, source = eval_examples(run.task, data, max_examples, labels)
    if len(texts) == 0:
        raise TfllmError(f"{source}: no examples to evaluate on")
    sparsity = summary(hf_model, ("attention", "feed_forward"))["overall"]
    name = name or run_dir.name
    log.info("comparing %s on %d examples of %s", name, len(texts), source)

    reference = Predictor.from_run(run).logits(texts, pairs)

    timed = [encode_one(tokenizer, t, pairs[i] if pairs else None, cfg.data.max_length)
             for i, t in enumerate(texts[:latency_examples])]
    keras_times = time_calls(keras_batch1(hf_model), timed)
    size, packed = file_sizes(run_dir / rundir.MODEL / "tf_model.h5")
    rows = [{"run": name, "variant": "keras_fp32", "file": "model/tf_model.h5", "size_bytes": size,
             "gzip_bytes": packed, "sparsity": sparsity, **row_metrics(reference, y, reference),
             "latency_p50_ms": percentile(keras_times, 50), "latency_p95_ms": percentile(keras_times, 95)}]
    for mode in modes:
        path = out_dir / model_filename(mode)
        if not export_is_current(path, run_dir, cfg, mode):
            export_tflite(run, mode, out_dir, calibration_data)
        runner = Predictor.load(path, num_threads)
        logits = runner.logits(texts, pairs, batch_size=1)  # as on a device: each text alone, unpadded
        times = time_calls(runner.backend.run, timed)
        size, packed = file_sizes(path)
        rows.append({"run": name, "variant": f"tflite_{mode if mode != 'none' else 'fp32'}",
                     "file": str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path),
                     "size_bytes": size, "gzip_bytes": packed, "sparsity": sparsity,
                     **row_metrics(logits, y, reference),
                     "latency_p50_ms": percentile(times, 50), "latency_p95_ms": percentile(times, 95)})
        log.info("%s: accuracy %.4f, agreement %.4f, p50 %.2f ms", rows[-1]["variant"],
                 rows[-1]["accuracy"], rows[-1]["agreement"], rows[-1]["latency_p50_ms"])
    report = {"run": str(run_dir), "data": source, "examples": len(texts),
              "latency_examples": len(timed), "labels": np.asarray(y).tolist(), "rows": rows}
    if write:
        io.write_json(out_dir / "report.json", report)
        io.write_text(out_dir / "report.md", markdown(rows) + "\n")
    return report


HEADERS = ["run", "variant", "size MB", "gzip MB", "sparsity", "accuracy", "macro-F1", "p50 ms",
           "p95 ms", "agreement"]


def table_row(r: dict) -> list:
    return [r["run"], r["variant"], f"{r['size_bytes'] / 1e6:.1f}", f"{r['gzip_bytes'] / 1e6:.1f}",
            f"{r['sparsity']:.1%}", f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
            f"{r['latency_p50_ms']:.2f}", f"{r['latency_p95_ms']:.2f}", f"{r['agreement']:.2%}"]


def markdown(rows: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in rows]
    return "\n".join(lines)


def print_report(report: dict) -> None:
    print(f"\n{report['run']}: {report['examples']} examples of {report['data']}; latency over "
          f"{report['latency_examples']} texts, batch 1, CPU")
    print(markdown(report["rows"]))


@main_guard(memory_hint=MACHINE_MEMORY_HINT)
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.compare", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--data", help="labelled data to evaluate on (default: the run's dev set)")
    parser.add_argument("--max-examples", type=int, help="evaluate on the first N examples only")
    parser.add_argument("--latency-examples", type=int, default=100, help="texts timed per variant")
    parser.add_argument("--quantize", help="comma-separated TFLite variants (default: all)")
    parser.add_argument("--threads", type=int, help="LiteRT interpreter threads (default: all cores)")
    parser.add_argument("--calibration-data", help="int8 calibration data (default: training data)")
    args = parse_command_line(parser, argv)
    setup_logging()
    modes = None
    if args.quantize:

        modes = [check_mode(m.strip()) for m in args.quantize.split(",")]
    report = compare_run(args.run_dir, args.data, args.max_examples, args.latency_examples, modes,
                         calibration_data=args.calibration_data, num_threads=args.threads)
    print_report(report)
    print(f"wrote {Path(args.run_dir) / 'export' / 'report.md'} and report.json")


if __name__ == "__main__":
    main()


__all__ = ["compare_run", "markdown", "print_report"]
