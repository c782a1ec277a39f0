"""bf16 against fp32 over one full SST-2 epoch: dev accuracy and wall time, per seed, from runs.

    for seed in 42 43 44; do for precision in mixed_bfloat16 none; do
      python -m tfllm.train --config configs/sst2_minilm.yaml train.mixed_precision=$precision \\
          train.seed=$seed train.restore_best=false train.eval_every=100000 \\
          train.checkpoint_every=100000 output_dir=runs/epoch_${precision}_$seed
    done; done
    python benchmarks/epoch_precision.py runs/epoch_* [--report NAME]

Each run's final step's weights (``restore_best=false``: no selection on dev) are scored on the
dev set twice, as ``python -m tfllm.evaluate RUN --data DEV --precision P`` scores them:

* **computing in the run's training precision** (``RUN/eval/dev_bfloat16`` for a bf16 run): a
  bf16 run's number includes bf16 inference rounding. Until the final report moved to float32
  this was the run's own ``metrics.json`` number, and it reproduces it;
* **computing in float32** (``RUN/eval/dev_float32``), what a run's ``metrics.json`` reports
  (``dev_precision: float32``) and what its exports compute: bf16 and fp32 training compared at
  one inference precision, so the difference is the training's alone.

Runs are paired by ``train.seed`` (one bf16 and one fp32 run per seed); each pair's difference
comes with a 95% paired-bootstrap interval over the 872 dev phrases (one phrase is 0.11 points).
Prints a table and the targets (bf16 within 0.5 points of fp32; every run >= 0.895) and writes
``benchmarks/results/epoch_precision.md`` (or ``NAME.md``). All runs must have run on the same machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SST2_TRAIN = 67_349
BF16, FP32 = "mixed_bfloat16", "none"
MIN_ACCURACY, MAX_GAP_POINTS = 0.895, 0.5


def hits(predictions_csv: Path) -> list[bool]:
    """Per-phrase correctness from an evaluation's predictions.csv."""
    frame = pd.read_csv(predictions_csv, dtype=str, keep_default_na=False)
    return list(frame["label"] == frame["predicted"])


def run_row(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    dev_file = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["dev_file"]
    own = common.scored_run(run_dir, dev_file, "bfloat16" if info["precision"] == BF16 else "float32")
    float32 = common.scored_run(run_dir, dev_file, "float32")
    loss = {name: json.loads((folder / "metrics.json").read_text())["loss"] for name, folder in
            (("own", own), ("float32", float32))}
    return {"run": run_dir.name, "precision": info["precision"], "seed": info["seed"], "cpu": info["cpu"],
            "code": info.get("code", "?")[:8], "own": hits(own / "predictions.csv"),
            "float32": hits(float32 / "predictions.csv"), "own_loss": loss["own"], "float32_loss": loss["float32"],
            "reported": metrics["dev"]["accuracy"], "reported_in": metrics.get("dev_precision", info["precision"]),
            "steps": metrics["steps"], "seconds": metrics["train_seconds"]}


def accuracy(correct: list[bool]) -> float:
    return sum(correct) / len(correct)


def pairs_by_seed(rows: list[dict]) -> dict[int, dict[str, dict]]:
    """``{seed: {precision: row}}``; every seed must have exactly one bf16 and one fp32 run."""
    seeds: dict[int, dict[str, dict]] = {}
    for r in rows:
        if r["precision"] not in (BF16, FP32):
            raise SystemExit(f"error: {r['run']}: precision {r['precision']}, expected {BF16} or {FP32}")
        if r["precision"] in seeds.setdefault(r["seed"], {}):
            raise SystemExit(f"error: two {r['precision']} runs with seed {r['seed']}: "
                             f"{seeds[r['seed']][r['precision']]['run']} and {r['run']}")
        seeds[r["seed"]][r["precision"]] = r
    for seed, pair in seeds.items():
        if len(pair) != 2:
            raise SystemExit(f"error: seed {seed} has only a {next(iter(pair))} run; pass its other precision's run too")
    return dict(sorted(seeds.items()))


def difference_lines(seeds: dict, column: str, label: str) -> list[str]:
    """Per seed: bf16 - fp32 with its paired-bootstrap interval; then the mean over seeds."""
    lines, differences = [], []
    for seed, pair in seeds.items():
        difference, low, high = common.paired_difference(pair[BF16][column], pair[FP32][column])
        differences.append(difference)
        lines.append(f"  - seed {seed}: {difference:+.2f} points (95% interval {low:+.2f} to {high:+.2f})")
    mean = statistics.mean(differences)
    verdict = "met" if abs(mean) <= MAX_GAP_POINTS else "NOT MET"
    return [f"- bf16 - fp32, {label}: mean over {len(seeds)} seed(s) {mean:+.3f} points "
            f"(target: within {MAX_GAP_POINTS}: {verdict})"] + lines


def threshold_line(rows: list[dict], column: str, label: str, means: dict) -> str:
    """Which runs score under the line in ``column``, with each precision's mean (from ``means``)."""
    below = [f"{r['run']} {accuracy(r[column]):.4f}" for r in rows if accuracy(r[column]) < MIN_ACCURACY]
    return (f"- every run >= {MIN_ACCURACY}, {label}: {'met' if not below else 'NOT MET (' + ', '.join(below) + ')'}; "
            f"mean over seeds: bf16 {means[BF16, column]:.4f}, fp32 {means[FP32, column]:.4f}")


def loss_line(seeds: dict) -> str:
    """Mean dev cross-entropy per precision: a continuous measure, far less noisy than accuracy."""
    means = {(p, c): statistics.mean(pair[p][c] for pair in seeds.values())
             for p in (BF16, FP32) for c in ("own_loss", "float32_loss")}
    return (f"- mean dev loss over seeds (lower is better; not a target): bf16 {means[BF16, 'own_loss']:.4f} "
            f"(computing in float32 {means[BF16, 'float32_loss']:.4f}), fp32 {means[FP32, 'own_loss']:.4f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories: one bf16 and one fp32 run per seed")
    parser.add_argument("--report", default="epoch_precision",
                        help="name of the report under benchmarks/results/ (default epoch_precision)")
    args = parser.parse_args(argv)
    rows = [run_row(run) for run in args.runs]
    if len({json.dumps(r["cpu"], sort_keys=True) for r in rows}) > 1:
        raise SystemExit("error: the runs ran on different CPUs: " + "; ".join(f"{r['run']}: {r['cpu']}" for r in rows))
    seeds = pairs_by_seed(rows)
    ordered = [pair[p] for pair in seeds.values() for p in (BF16, FP32)]
    table = common.markdown_table(
        ["run", "seed", "precision", "dev accuracy, computing in the training precision",
         "dev accuracy, computing in float32", "dev loss, training precision / float32",
         "metrics.json (computed in)", "steps", "wall s (whole run)", "seq/s (whole run)", "code"],
        [(r["run"], r["seed"], r["precision"], f"{accuracy(r['own']):.4f}", f"{accuracy(r['float32']):.4f}",
          f"{r['own_loss']:.4f} / {r['float32_loss']:.4f}", f"{r['reported']:.4f} ({r['reported_in']})",
          r["steps"], f"{r['seconds']:.0f}", f"{SST2_TRAIN / r['seconds']:.1f}", r["code"]) for r in ordered])
    own, float32 = "computing in the training precision", "computing in float32"
    cpu = rows[0]["cpu"]
    means = {(p, c): statistics.mean(accuracy(pair[p][c]) for pair in seeds.values())
             for p in (BF16, FP32) for c in ("own", "float32")}
    text = "\n".join(
        [f"CPU: {cpu['model']}, {cpu['cores']} cores, flags: {' '.join(cpu['flags'])}", "", table, "",
         "Targets (issue 14):", *difference_lines(seeds, "own", own), *difference_lines(seeds, "float32", float32),
         threshold_line(ordered, "own", own, means), threshold_line(ordered, "float32", float32, means),
         loss_line(seeds), "",
         common.result_line(seeds=len(seeds), bf16_mean=means[BF16, "own"], fp32_mean=means[FP32, "own"],
                            bf16_mean_float32_eval=means[BF16, "float32"], fp32_mean_float32_eval=means[FP32, "float32"],
                            min_accuracy=min(r["reported"] for r in rows))])
    print(text)
    common.write_report(args.report, text, "One SST-2 epoch: bf16 against fp32, paired by seed", argv=sys.argv)


if __name__ == "__main__":
    main()
