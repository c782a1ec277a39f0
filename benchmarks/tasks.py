"""The task targets: STS-B regression, GoEmotions multi-label and CoNLL-2003 NER on the packaged MiniLM.

    python benchmarks/tasks.py --out /tmp/tfllm-tasks [--tasks stsb,goemotions,conll2003]

Trains each task's config (``configs/<name>_minilm.yaml``, the packaged MiniLM-L6-H384) into
``--out/<name>`` through ``tfllm.train.run_training``, reusing a finished run found there (CoNLL
twice: with the config's CRF and with ``model.crf=false``), and
writes ``benchmarks/results/tasks.md``: the dev metrics of the final step (every config sets
``train.restore_best: false``, so no checkpoint is picked on the dev set it is scored on), the
target, and the training time. GoEmotions' headline macro-F1 uses per-label thresholds tuned on
that same dev set (as the task does at the end of a run), so it flatters; beside it are the
macro-F1 at a fixed 0.5 and at the fixed 0.3 of the GoEmotions paper (its BERT-base: 0.46 on test),
computed here from the run's dev predictions.
Ends with one ``RESULT`` line.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402  (imports tfllm first)
from tfllm.config import load_config  # noqa: E402
from tfllm.data.splits import read_splits  # noqa: E402
from tfllm.inference import Predictor  # noqa: E402
from tfllm.metrics import multilabel_metrics  # noqa: E402
from tfllm.tasks.multi_label import sigmoid  # noqa: E402
from tfllm.train import run_training  # noqa: E402

# name -> (config, overrides, headline metric, target, what the target is)
TASKS = {
    "stsb": ("stsb", [], "pearson", 0.86, "dev Pearson >= 0.86"),
    "goemotions": ("goemotions", [], "macro_f1", 0.46, "dev macro-F1 >= 0.46 (thresholds tuned on dev)"),
    "conll2003": ("conll2003", [], "f1", 0.90, "dev entity F1 >= 0.90 (seqeval strict), CRF"),
    "conll2003_softmax": ("conll2003", ["model.crf=false"], "f1", 0.90, "the same without the CRF"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/tfllm-tasks", help="run directories (finished ones are reused)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ", ".join(TASKS))
    return parser.parse_args(argv)


def at_fixed_threshold(run_dir: Path, threshold: float) -> dict:
    """Micro / macro-F1 of a multi-label run's dev predictions at one threshold for every label."""
    predictor = Predictor.load(run_dir)
    task = predictor.task
    _, dev = read_splits(task.cfg.data, task.cfg.train.seed)  # the run's own dev split
    probabilities = sigmoid(predictor.logits(dev.texts, dev.pairs))
    scores = multilabel_metrics(probabilities, task.targets(dev), task.label_names, threshold)
    return {f"micro_f1_at_{threshold}": scores["micro_f1"], f"macro_f1_at_{threshold}": scores["macro_f1"]}


def finished_or_trained(name: str, out: Path) -> dict:
    """``metrics.json`` of ``out/<name>``, training the config there first if it is not finished."""
    run_dir = out / name
    config, overrides = TASKS[name][:2]
    if not (run_dir / "metrics.json").is_file():
        cfg = load_config(ROOT / "configs" / f"{config}_minilm.yaml", [*overrides, f"output_dir={run_dir}"])
        run_training(cfg, resume=(run_dir / "run_info.json").is_file())
    return json.loads((run_dir / "metrics.json").read_text())


def row(name: str, metrics: dict, info: dict) -> tuple[list, float]:
    metric, target, what = TASKS[name][2:]
    dev = metrics["dev"]
    value = dev[metric]
    details = {"stsb": lambda: f"Spearman {dev['spearman']:.4f}, MSE {dev['mse']:.3f}",
               "goemotions": lambda: (f"micro-F1 {dev['micro_f1']:.4f}; at 0.5: macro {dev['macro_f1_at_0.5']:.4f}, "
                                      f"micro {dev['micro_f1_at_0.5']:.4f}; at 0.3: macro "
                                      f"{metrics['macro_f1_at_0.3']:.4f}, micro {metrics['micro_f1_at_0.3']:.4f}"),
               "conll2003": lambda: (f"P {dev['precision']:.4f} R {dev['recall']:.4f}; "
                                     + ", ".join(f"{k} {v:.3f}" for k, v in sorted(dev["per_type_f1"].items())))
               }[TASKS[name][0]]()
    return ([name, f"{metric} **{value:.4f}**", details, what, "met" if value >= target else "**not met**",
             str(metrics["steps"]), f"{metrics['train_seconds'] / 60:.1f}", info.get("code", "?")[:12]], value)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        sys.exit(f"error: unknown --tasks {unknown}; choose from {', '.join(TASKS)}")
    print(common.machine_line(), flush=True)
    begin = time.time()
    rows, values = [], {}
    for name in names:
        metrics = finished_or_trained(name, Path(args.out))
        if name == "goemotions":
            metrics.update(at_fixed_threshold(Path(args.out) / name, 0.3))
        info = json.loads((Path(args.out) / name / "run_info.json").read_text())
        table_row, values[name] = row(name, metrics, info)
        rows.append(table_row)
    table = common.markdown_table(["run", "dev metric", "also", "target", "", "steps", "train min", "trained at"], rows)
    met = sum(values[n] >= TASKS[n][3] for n in names)
    result = common.result_line(**{f"{n}_{TASKS[n][2]}": round(values[n], 4) for n in names},
                                targets_met=f"{met}/{len(names)}", minutes=round((time.time() - begin) / 60, 1))
    print(table)
    print(result)
    common.write_report("tasks", "\n".join([table, "", result]), "Task targets (packaged MiniLM-L6-H384)",
                        started=started)


if __name__ == "__main__":
    main()
