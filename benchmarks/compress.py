"""Compression benchmark: every deployment variant of the SST-2 fine-tuned MiniLM, one table.

    python benchmarks/compress.py [--base-run DIR] [--out DIR] [--compress-steps S]
                                  [--phases qat,pruned50,pruned80] [--dev-examples N]
                                  [--latency-examples N]

1. **Base run**: a finished SST-2 fine-tuning run of the packaged MiniLM-L6 (``--base-run``, e.g.
   the one ``benchmarks/finetune.py`` leaves in ``--out/sst2_minilm``); without it, one is trained
   with ``configs/sst2_minilm.yaml`` (1 epoch) into ``--out/sst2_minilm``.
   **No run picks its checkpoint on the dev set it is scored on**: the base run and every phase
   run with ``train.restore_best=false`` (the final step's weights); a ``--base-run`` that did
   select on dev is refused (``--allow-dev-selected-base`` to use it anyway, flagged in the report).
2. **Compression phases** from that run (``model.checkpoint=<base>``, same Trainer), batch 32,
   as many steps as each config says (or ``--compress-steps``): magnitude pruning to 50% and to
   80% of every encoder kernel, distilling from the base run (``configs/sst2_minilm_pruned.yaml``),
   and QAT with per-channel int8 kernels, distilling from the base run
   (``configs/sst2_minilm_qat.yaml``).
3. **Variants**, all measured by :func:`tfllm.compare.compare_run` on the SST-2 dev set (872
   phrases, or ``--dev-examples``): FP32 Keras, FP32 TFLite, dynamic-range, float16, int8
   (post-training, calibrated on 200 training phrases, LayerNorm, elementwise ops and position
   embeddings kept float), full-integer int8,
   QAT int8, 50% pruned, 80% pruned (FP32
   TFLite) and pruned + int8. Latency: batch 1, each phrase at its own length, the first
   ``--latency-examples`` dev phrases, LiteRT interpreter with its default threads / TF eager
   ``tf.function`` for Keras; p50 and p95 in ms.
4. **Targets** (the issue's): int8 <= 30% of the FP32 TFLite size and >= 2x faster (p50) with
   accuracy within 1.0 point of FP32; QAT int8 accuracy >= PTQ int8; 50% sparsity within 1.0
   point of dense.

Output: the machine line (CPU model, ISA flags), the Markdown table, the target checks and one
final ``RESULT ...`` line, also written to ``--out/compress_benchmark.md`` and, with a header
(date, machine, command, git commit), to ``benchmarks/results/compress.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402  (imports tfllm first: Keras 2)

from tfllm.cli import setup_logging  # noqa: E402
from tfllm.compare import compare_run  # noqa: E402
from tfllm.config import load_config  # noqa: E402
from tfllm.train import run_training  # noqa: E402

log = logging.getLogger("tfllm")

CONFIGS = common.ROOT / "configs"
SST2 = common.SHARED_DATA / "sst2"


NO_DEV_SELECTION = "train.restore_best=false"  # the final step's weights: no pick on dev


def data_overrides(args) -> list[str]:
    return [f"data.train_file={SST2}/train.tsv", f"data.dev_file={SST2}/dev.tsv", NO_DEV_SELECTION]


def selected_on_dev(run: Path) -> bool:
    """Whether a finished run kept its best dev checkpoint (``train.restore_best``, default on)."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    return bool((config.get("train") or {}).get("restore_best", True))


def ensure_base(args) -> Path:
    if args.base_run:
        base = Path(args.base_run)
        if not (base / "model" / "tf_model.h5").is_file():
            sys.exit(f"error: --base-run {base} is not a finished run")
        if selected_on_dev(base) and not args.allow_dev_selected_base:
            sys.exit(f"error: --base-run {base} picked its checkpoint on dev (train.restore_best); "
                     "rerun it with train.restore_best=false or pass --allow-dev-selected-base")
        return base
    base = Path(args.out) / "sst2_minilm"
    if not (base / "model" / "tf_model.h5").is_file():
        cfg = load_config(CONFIGS / "sst2_minilm.yaml", [*data_overrides(args), f"output_dir={base}"])
        run_training(cfg, overwrite=True)
    return base


def compress_run(args, base: Path, name: str, config: str, extra: list[str]) -> Path:
    out = Path(args.out) / name
    if (out / "model" / "tf_model.h5").is_file() and not args.retrain:
        log.info("reusing %s", out)
        return out
    steps = [f"train.max_steps={args.compress_steps}"] if args.compress_steps else []  # else the config's
    cfg = load_config(CONFIGS / config, [*data_overrides(args), f"model.checkpoint={base}",
                                         f"output_dir={out}", *steps, *extra])
    run_training(cfg, overwrite=True)
    return out


def full_integer_copy(base: Path, out: Path) -> Path:
    """A run directory sharing ``base``'s model whose config asks for full-integer int8
    (``compression.int8.float_ops=[]``), so the default (LayerNorm in float) has a comparison."""
    import shutil

    import yaml

    out.mkdir(parents=True, exist_ok=True)
    for name in ("model", "label_map.json", "run_info.json"):
        if not (out / name).exists():
            (out / name).symlink_to((base / name).resolve())
    config = yaml.safe_load((base / "config.yaml").read_text())
    config.setdefault("compression", {}).setdefault("int8", {})["float_ops"] = []
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.rmtree(out / "export", ignore_errors=True)
    return out


def int8_gemm_ceiling(repeats: int = 200) -> dict:
    """Median ms of one BERT feed-forward matmul (128 tokens x 384 -> 1536), FP32 vs int8, in LiteRT
    on this CPU: the int8 speed-up the hardware allows before any model overhead."""
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(scale=0.05, size=(384, 1536)).astype(np.float32))
    fn = tf.function(lambda x: tf.matmul(x, kernel),
                     input_signature=[tf.TensorSpec([128, 384], tf.float32)]).get_concrete_function()
    out = {}
    for mode in ("fp32", "int8"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
        if mode == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([rng.normal(size=(128, 384)).astype(np.float32)]
                                                        for _ in range(16))
        interpreter = Interpreter(model_content=converter.convert(), num_threads=1)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                               rng.normal(size=(128, 384)).astype(np.float32))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            interpreter.invoke()
            times.append((time.perf_counter() - start) * 1000)
        out[mode] = float(np.median(times))
    return out


PHASES = {  # name: (run directory, config, overrides, label)
    "qat": ("sst2_minilm_qat", "sst2_minilm_qat.yaml", [], "QAT"),
    "pruned50": ("sst2_minilm_pruned50", "sst2_minilm_pruned.yaml",
                 ["compression.pruning.target_sparsity=0.5"], "50% pruning"),
    "pruned80": ("sst2_minilm_pruned80", "sst2_minilm_pruned.yaml",
                 ["compression.pruning.target_sparsity=0.8"], "80% pruning"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-run", help="a finished SST-2 MiniLM run (default: train one)")
    parser.add_argument("--out", default="runs/bench_compress", help="where the runs and report go")
    parser.add_argument("--compress-steps", type=int, default=None,
                        help="steps of every compression phase (default: each config's train.max_steps: "
                             "pruning 1,500, QAT 800)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="compression phases to run, comma-separated (default all: %(default)s); the "
                             "report leaves out the rows and targets of the others")
    parser.add_argument("--dev-examples", type=int, default=None, help="dev phrases evaluated (default all)")
    parser.add_argument("--latency-examples", type=int, default=200, help="phrases timed per variant")
    parser.add_argument("--allow-dev-selected-base", action="store_true",
                        help="accept a --base-run that kept its best dev checkpoint (flagged in the report)")
    parser.add_argument("--retrain", action="store_true",
                        help="retrain compression runs that exist (default: reuse them, whatever their steps)")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown {unknown}; choose from {', '.join(PHASES)}")
    return args


def measure_rows(args, base: Path, runs: dict) -> tuple[dict, dict]:
    """``{row label: compare_run row}`` for the base run's variants and every phase run."""
    def variants(run, modes, names):
        report = compare_run(run, max_examples=args.dev_examples, latency_examples=args.latency_examples,
                             modes=modes)
        rows = {r["variant"]: r for r in report["rows"]}
        return {label: rows[variant] for variant, label in names.items()}, report

    rows, report = variants(base, ["none", "dynamic", "float16", "int8"],
                            {"keras_fp32": "FP32 Keras", "tflite_fp32": "FP32 TFLite",
                             "tflite_dynamic": "dynamic-range", "tflite_float16": "float16",
                             "tflite_int8": "int8 (PTQ)"})
    more, _ = variants(full_integer_copy(base, Path(args.out) / "sst2_minilm_full_integer"), ["int8"],
                       {"tflite_int8": "int8 full-integer (PTQ)"})
    rows.update(more)
    if "qat" in runs:
        rows.update(variants(runs["qat"], ["qat"], {"tflite_qat": "QAT int8"})[0])
    for key, tag in (("pruned50", "50%"), ("pruned80", "80%")):
        if key in runs:
            rows.update(variants(runs[key], ["none", "int8"], {
                "keras_fp32": f"{tag} pruned Keras", "tflite_fp32": f"{tag} pruned TFLite",
                "tflite_int8": f"{tag} pruned + int8"})[0])
    return rows, report


def result_values(rows: dict, agreement: dict) -> dict:
    """The RESULT keys (None, printed ``nan``, for rows of phases that did not run)."""
    def acc(name):
        return 100 * rows[name]["accuracy"] if name in rows else None

    fp32, int8, reference = rows["FP32 TFLite"], rows["int8 (PTQ)"], rows["FP32 Keras"]
    values = {
        "fp32_acc": acc("FP32 Keras"), "tflite_fp32_acc": acc("FP32 TFLite"),
        "dynamic_acc": acc("dynamic-range"), "float16_acc": acc("float16"), "int8_acc": acc("int8 (PTQ)"),
        "qat_int8_acc": acc("QAT int8"), "pruned50_acc": acc("50% pruned Keras"),
        "pruned80_acc": acc("80% pruned Keras"), "pruned80_int8_acc": acc("80% pruned + int8"),
        "int8_size_ratio": int8["size_bytes"] / fp32["size_bytes"],
        "int8_speedup": fp32["latency_p50_ms"] / int8["latency_p50_ms"],
        "fp32_tflite_p50_ms": fp32["latency_p50_ms"], "int8_p50_ms": int8["latency_p50_ms"],
        "keras_p50_ms": reference["latency_p50_ms"],
        "pruned80_gzip_ratio": (rows["80% pruned TFLite"]["gzip_bytes"] / fp32["gzip_bytes"]
                                if "80% pruned TFLite" in rows else None),
        "full_int8_acc": acc("int8 full-integer (PTQ)"),
        "qat_size_ratio": rows["QAT int8"]["size_bytes"] / fp32["size_bytes"] if "QAT int8" in rows else None,
        "int8_agreement": 100 * agreement["int8 (PTQ)"],
        "qat_int8_agreement": 100 * agreement["QAT int8"] if "QAT int8" in rows else None,
    }
    return values


def check_targets(values: dict) -> dict:
    """The issue's targets: True / False, or None where the phase they need did not run."""
    def gap(name):
        return None if values[name] is None else values["fp32_acc"] - values[name] <= 1.0

    return {
        "int8 size <= 30% of FP32 TFLite": values["int8_size_ratio"] <= 0.30,
        "int8 >= 2x faster than FP32 TFLite (p50, batch 1)": values["int8_speedup"] >= 2.0,
        "int8 accuracy within 1.0 point of FP32": gap("int8_acc"),
        "QAT int8 accuracy >= PTQ int8": (None if values["qat_int8_acc"] is None
                                          else values["qat_int8_acc"] >= values["int8_acc"]),
        "50% pruned within 1.0 point of dense": gap("pruned50_acc"),
    }


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    log.info("%s", common.machine_line())
    started, started_at = time.time(), datetime.datetime.now(datetime.timezone.utc)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    base = ensure_base(args)
    runs = {key: compress_run(args, base, PHASES[key][0], PHASES[key][1], PHASES[key][2])
            for key in PHASES if key in args.phases}
    rows, report = measure_rows(args, base, runs)

    reference = rows["FP32 Keras"]
    labels = report["labels"]  # the same dev examples, in the same order, for every run

    def hits(row):
        return [p == t for p, t in zip(row["predictions"], labels)]

    deltas = {name: common.paired_difference(hits(r), hits(reference)) for name, r in rows.items()}
    # agreement with the dense FP32 Keras model, for every row (compare_run's own column is with
    # the Keras model of the row's run: for the QAT and pruned runs, not the dense one)
    agreement = {name: sum(p == q for p, q in zip(r["predictions"], reference["predictions"]))
                 / len(labels) for name, r in rows.items()}
    headers = ["variant", "size MB", "gzip MB", "sparsity", "accuracy", "vs FP32 (95% CI)", "macro-F1",
               "p50 ms", "p95 ms", "agreement w/ FP32 Keras"]
    table = common.markdown_table(headers, [
        [name, f"{r['size_bytes'] / 1e6:.1f}", f"{r['gzip_bytes'] / 1e6:.1f}", f"{r['sparsity']:.1%}",
         f"{100 * r['accuracy']:.2f}", "{:+.2f} [{:+.2f}, {:+.2f}]".format(*deltas[name]),
         f"{100 * r['macro_f1']:.2f}", f"{r['latency_p50_ms']:.2f}",
         f"{r['latency_p95_ms']:.2f}", f"{100 * agreement[name]:.1f}%"] for name, r in rows.items()])

    values = result_values(rows, agreement)
    gemm = int8_gemm_ceiling()
    values.update(gemm_fp32_ms=gemm["fp32"], gemm_int8_ms=gemm["int8"], gemm_int8_speedup=gemm["fp32"] / gemm["int8"])
    targets = check_targets(values)
    measured = [ok for ok in targets.values() if ok is not None]
    dev_selected = [name for name, run in [("base", base)] + [(PHASES[k][3], r) for k, r in runs.items()]
                    if selected_on_dev(run)]
    skipped = [PHASES[k][3] for k in PHASES if k not in runs]
    lines = [common.machine_line(), "", table, "", f"{report['examples']} dev phrases; latency over "
             f"{report['latency_examples']} phrases at batch 1; compression phases from {base}: " + (", ".join(
                 f"{PHASES[k][3]} {json.loads((run / 'metrics.json').read_text())['steps']} steps"
                 for k, run in runs.items()) or "none")
             + (f"; not run (--phases): {', '.join(skipped)}" if skipped else ""),
             "int8 (PTQ) keeps LayerNorm, the elementwise ops and the position / token-type embedding "
             "lookups in float (compression.int8.float_ops, the default); full-integer quantises them too.",
             f"One feed-forward matmul (128x384 by 384x1536) alone in LiteRT, 1 thread: FP32 "
             f"{gemm['fp32']:.2f} ms, int8 {gemm['int8']:.2f} ms ({gemm['fp32'] / gemm['int8']:.2f}x): "
             f"the int8 speed-up this CPU's kernels allow.",
             "vs FP32: accuracy difference from the FP32 Keras model in points, with a 95% paired "
             "bootstrap interval over the dev phrases (what the dev set can resolve).",
             "Checkpoint selection: " + ("every run here (base" + "".join(f", {PHASES[k][3]}" for k in runs)
                                         + ") reports its final step (train.restore_best=false): none "
                                         "was picked on this dev set." if not dev_selected else
                                         "WARNING: picked on this dev set: " + ", ".join(dev_selected) + "."),
             ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" + (" (not measured: its phase did not run)" if ok is None else "")
              for name, ok in targets.items()]
    result = common.result_line(**values, targets_met=f"{sum(measured)}/{len(measured)}",
                                dev_selected=len(dev_selected), minutes=(time.time() - started) / 60,
                                isa=",".join(common.machine_info()["flags"]) or "none")
    text = "\n".join(lines + ["", result])
    print(text)
    (Path(args.out) / "compress_benchmark.md").write_text(text + "\n", encoding="utf-8")
    common.write_report("compress", text, "Compression benchmark (SST-2 MiniLM)", started=started_at)
    (Path(args.out) / "compress_benchmark.json").write_text(json.dumps({"rows": rows, "values": values},
                                                                      indent=2, default=float))


if __name__ == "__main__":
    main()
