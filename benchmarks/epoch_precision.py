"""bf16 against fp32 over one full SST-2 epoch (same seed): dev accuracy and wall time, from two runs.

    python -m tfllm.train --config configs/sst2_minilm.yaml train.mixed_precision=mixed_bfloat16 \\
        train.restore_best=false train.eval_every=100000 train.checkpoint_every=100000 output_dir=RUN_BF16
    python -m tfllm.train --config configs/sst2_minilm.yaml train.mixed_precision=none \\
        train.restore_best=false train.eval_every=100000 train.checkpoint_every=100000 output_dir=RUN_FP32
    python benchmarks/epoch_precision.py RUN_BF16 RUN_FP32

Reads each run's metrics.json (final-step dev accuracy: restore_best=false, no selection on dev)
and run_info.json (precision, CPU), prints a table and the difference, and writes
benchmarks/results/epoch_precision.md. The two runs must have run on the same machine.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SST2_TRAIN = 67_349


def row(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    return {"run": run_dir.name, "precision": info["precision"], "cpu": info["cpu"],
            "accuracy": metrics["dev"]["accuracy"], "steps": metrics["steps"], "seconds": metrics["train_seconds"]}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: python benchmarks/epoch_precision.py RUN_BF16 RUN_FP32")
    bf16, fp32 = (row(Path(a)) for a in argv)
    if bf16["cpu"] != fp32["cpu"]:
        raise SystemExit(f"error: the runs ran on different CPUs ({bf16['cpu']} vs {fp32['cpu']})")
    table = common.markdown_table(
        ["run", "precision", "SST-2 dev accuracy (final step)", "steps", "wall s (whole run)", "seq/s (whole run)"],
        [(r["run"], r["precision"], f"{r['accuracy']:.4f}", r["steps"], f"{r['seconds']:.0f}",
          f"{SST2_TRAIN / r['seconds']:.1f}") for r in (bf16, fp32)])
    difference = 100 * (bf16["accuracy"] - fp32["accuracy"])
    cpu = bf16["cpu"]
    text = "\n".join([f"CPU: {cpu['model']}, {cpu['cores']} cores, flags: {' '.join(cpu['flags'])}", "", table, "",
                      f"bf16 - fp32: {difference:+.2f} points (target: within 0.5: "
                      f"{'met' if abs(difference) <= 0.5 else 'NOT MET'}); both >= 0.895: "
                      f"{'met' if min(bf16['accuracy'], fp32['accuracy']) >= 0.895 else 'NOT MET'}", "",
                      common.result_line(bf16_accuracy=bf16["accuracy"], fp32_accuracy=fp32["accuracy"],
                                         difference_points=difference)])
    print(text)
    common.write_report("epoch_precision", text, "One SST-2 epoch: bf16 against fp32 (same seed)", argv=sys.argv)


if __name__ == "__main__":
    main()
