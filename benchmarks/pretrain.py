"""Pretraining benchmark: continued MLM of MiniLM on IMDB, its effect on IMDB fine-tuning, and a
tiny BERT from scratch.

    python benchmarks/pretrain.py [--continue-steps N] [--scratch-steps N] [--finetune-examples N]
                                  [--test-examples N] [--max-documents N] [--out DIR]

Three parts, all through tfllm's own entry points (``run_training``, ``heldout_metrics``):

1. **Continued pretraining** of the packaged MiniLM-L6-H384 on IMDB's unlabelled reviews
   (``configs/mlm_imdb_continue.yaml``: blocks of 128 tokens, batch 32, 15% masking) for a fixed
   number of steps (default 300: 54 minutes measured on 2 shared CPU cores). MiniLM ships no MLM head, so
   the perplexity of the packaged encoder under a fresh head (tens of thousands) says nothing
   about the encoder. The fair "before" is the packaged encoder, frozen, with only the MLM head
   fitted (``--head-steps``, default 300, embeddings and all layers frozen): the best that
   encoder does as it ships. Continued pretraining then starts from that fitted head and trains
   everything. Held-out perplexity and masked-token accuracy are measured at all three points
   on the same held-out reviews (2% of the documents, never trained on) with the same masks.
2. **Fine-tuning** on the same seeded 2,000-review subset of IMDB train, evaluated on the 5,000
   reviews of ``imdb/test_5k.tsv``: (a) from the packaged MiniLM, (b) from the continued run.
   Same config and budget (2 epochs, batch 16, max_length 128, lr 5e-5, no best-checkpoint
   selection: the test set is only evaluated, never used to choose), once per seed of
   ``--finetune-seeds`` (default three: one seed's difference is within the test set's noise).
3. **From scratch**: ``configs/mlm_scratch_tiny.yaml`` (an 8,000-token WordPiece vocabulary trained
   on the corpus, BERT-tiny 2x128) on the same corpus: the training-loss curve (TensorBoard
   scalars) and training throughput in tokens/s (from the Trainer's ``examples_per_sec`` over
   the log windows without an evaluation or a checkpoint save, times 128 tokens per block).

Prints the machine line (CPU model, ISA flags), a Markdown table and ends with one
``RESULT key=value ...`` line; the report is also written to ``--out/pretrain_benchmark.md`` and
(not with ``--quick``), with a header (date, machine, command, git commit), to
``benchmarks/results/pretrain.md``. ``--quick`` runs a few steps of everything on a small
slice (a smoke test of the script, minutes), not a measurement.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402  (imports tfllm first: Keras 2)

from tfllm.cli import setup_logging  # noqa: E402
from tfllm.config import Config, load_config  # noqa: E402
from tfllm.tasks.masked_lm import heldout_metrics  # noqa: E402
from tfllm.train import run_training  # noqa: E402

log = logging.getLogger("tfllm")
IMDB = common.SHARED_DATA / "imdb"
CONFIGS = common.ROOT / "configs"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head-steps", type=int, default=300,
                        help="steps fitting the MLM head on the frozen packaged encoder (batch 32)")
    parser.add_argument("--continue-steps", type=int, default=300, help="continued-MLM steps (batch 32)")
    parser.add_argument("--scratch-steps", type=int, default=600, help="from-scratch steps (batch 64)")
    parser.add_argument("--finetune-examples", type=int, default=2000)
    parser.add_argument("--finetune-epochs", type=float, default=2.0)
    parser.add_argument("--finetune-seeds", default="13,14,15",
                        help="comma-separated seeds; (a) and (b) are fine-tuned once per seed (paired)")
    parser.add_argument("--test-examples", type=int, default=None,
                        help="evaluate on a seeded subset of test_5k (default: all 5,000)")
    parser.add_argument("--max-documents", type=int, default=None,
                        help="read only the first N reviews of unsup.txt (default: all 50,000)")
    parser.add_argument("--max-length", type=int, default=128, help="MLM block length")
    parser.add_argument("--skip-scratch", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs already in --out (same names) instead of retraining")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (not a measurement)")
    parser.add_argument("--out", default="/tmp/tfllm-pretrain-bench")
    args = parser.parse_args(argv)
    if args.quick:
        args.head_steps, args.continue_steps, args.scratch_steps = 8, 12, 30
        args.finetune_examples, args.finetune_epochs = 64, 1.0
        args.finetune_seeds = args.finetune_seeds.split(",")[0]
        args.test_examples = args.test_examples or 128
        args.max_documents = args.max_documents or 600
        args.max_length = min(args.max_length, 64)
    return args


def mlm_config(args, name: str, steps: int, extra=()) -> Config:
    overrides = [f"data.train_file={IMDB / 'unsup.txt'}", f"output_dir={Path(args.out) / name}",
                 f"train.max_steps={steps}", f"data.max_length={args.max_length}",
                 f"train.eval_every={max(1, steps // 4)}", f"train.checkpoint_every={max(1, steps // 4)}",
                 f"train.log_every={max(1, min(20, steps // 20))}", *extra]
    if args.max_documents:
        overrides.append(f"data.max_documents={args.max_documents}")
    if args.quick:
        overrides += ["data.max_dev_examples=32", "data.dev_fraction=0.1"]
    config = "mlm_scratch_tiny.yaml" if name == "scratch" else "mlm_imdb_continue.yaml"
    return load_config(CONFIGS / config, overrides)


def finetune_config(args, name: str, checkpoint: str, seed: int) -> Config:
    steps = math.ceil(args.finetune_epochs * math.ceil(args.finetune_examples / 16))
    overrides = [f"name={name}", f"output_dir={Path(args.out) / name}", f"model.checkpoint={checkpoint}",
                 f"data.train_file={IMDB / 'train.tsv'}", f"data.dev_file={IMDB / 'test_5k.tsv'}",
                 "data.text_column=text", "data.label_column=label", "data.label_names=[0, 1]",
                 f"data.max_train_examples={args.finetune_examples}", "data.max_length=128",
                 f"train.epochs={args.finetune_epochs}", "train.batch_size=16", "train.learning_rate=5e-5",
                 "train.warmup_ratio=0.1", f"train.eval_every={steps}", "train.restore_best=false",
                 f"train.log_every={max(1, min(25, steps // 10))}", f"train.seed={seed}"]
    if args.test_examples:
        overrides.append(f"data.max_dev_examples={args.test_examples}")
    return load_config(None, overrides)


def train(cfg: Config, reuse: bool) -> Path:
    """Train ``cfg``'s run, or with ``reuse`` return it as it is if it already finished."""
    run_dir = cfg.run_dir
    if reuse and (run_dir / "model" / "tf_model.h5").is_file() and (run_dir / "metrics.json").is_file():
        log.info("reusing %s", run_dir)
        return run_dir
    return run_training(cfg, overwrite=True)


def throughput(run_dir: Path, cfg: Config) -> float:
    """Training examples/s from TensorBoard, without windows that held an evaluation or a save."""
    rates = common.read_scalars(run_dir / "tensorboard" / "train", "examples_per_sec")
    log_every = cfg.train.log_every
    busy = {s for s in rates for k in range(s - log_every + 1, s + 1)
            if k % (cfg.train.eval_every or 10 ** 9) == 0 or k % cfg.train.checkpoint_every == 0}
    clean = [rate for step, rate in rates.items() if step not in busy]
    if not clean:
        clean = list(rates.values())
    # each window's rate is examples/seconds; combine as total examples / total seconds
    return len(clean) / sum(1.0 / r for r in clean) if clean else float("nan")


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    log.info("%s", common.machine_line())
    started, started_at = time.time(), datetime.datetime.now(datetime.timezone.utc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. continued pretraining: perplexity with a fresh head, with a fitted head, after
    head_cfg = mlm_config(args, "head_fit", args.head_steps,
                          ["model.freeze_embeddings=true", "model.freeze_layers=6", "train.learning_rate=1e-3"])
    args.dev_fraction = head_cfg.data.dev_fraction
    fresh = heldout_metrics(head_cfg)
    log.info("held-out, packaged encoder + fresh head: %s", fresh)
    head_dir = train(head_cfg, args.reuse)
    before = heldout_metrics(head_cfg, str(head_dir))
    log.info("held-out, packaged encoder + fitted head: %s", before)
    cont_cfg = mlm_config(args, "continue", args.continue_steps, [f"model.checkpoint={head_dir}"])
    cont_dir = train(cont_cfg, args.reuse)
    after = heldout_metrics(cont_cfg, str(cont_dir))
    log.info("held-out after: %s", after)
    cont_rate = throughput(cont_dir, cont_cfg) * args.max_length

    # 2. fine-tuning from (a) the packaged checkpoint and (b) the continued one
    finetuned = {"packaged": [], "continued": []}
    for seed in (int(s) for s in args.finetune_seeds.split(",")):
        for key, checkpoint in (("packaged", "packaged:minilm-l6"), ("continued", str(cont_dir))):
            run = train(finetune_config(args, f"finetune_{key}_s{seed}", checkpoint, seed), args.reuse)
            finetuned[key].append(dict(json.loads((run / "metrics.json").read_text())["dev"], seed=seed))

    # 3. from scratch
    scratch = None
    if not args.skip_scratch:
        scratch_cfg = mlm_config(args, "scratch", args.scratch_steps)
        scratch_dir = train(scratch_cfg, args.reuse)
        losses = common.read_scalars(scratch_dir / "tensorboard" / "train", "loss")
        metrics = json.loads((scratch_dir / "metrics.json").read_text())
        scratch = {"curve": losses, "dev": metrics["dev"], "history": metrics["history"],
                   "tokens_per_s": throughput(scratch_dir, scratch_cfg) * args.max_length,
                   "vocab": len((scratch_dir / "tokenizer" / "vocab.txt").read_text().splitlines())}

    text, result = report(args, fresh, before, after, cont_rate, finetuned, scratch, time.time() - started)
    print("\n" + text + "\n" + result)
    (out / "pretrain_benchmark.md").write_text(f"{text}\n\n{result}\n", encoding="utf-8")
    if not args.quick:  # a smoke test is no measurement: keep it out of benchmarks/results
        common.write_report("pretrain", f"{text}\n\n{result}", "Pretraining benchmark (IMDB)",
                            started=started_at)


def report(args, fresh, before, after, cont_rate, finetuned, scratch, seconds):
    a, b = finetuned["packaged"], finetuned["continued"]
    mean = lambda runs, key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    rows = [[f"held-out perplexity (IMDB unsup, {args.dev_fraction:.0%} of reviews)", f"{fresh['perplexity']:.0f}",
             f"{before['perplexity']:.2f}", f"{after['perplexity']:.2f}"],
            ["held-out masked-token accuracy", f"{fresh['accuracy']:.3f}", f"{before['accuracy']:.3f}",
             f"{after['accuracy']:.3f}"],
            ["continued-MLM training throughput (tokens/s)", "", "", f"{cont_rate:.0f}"]]
    columns = ["", "packaged, fresh head", f"before: packaged, head fitted ({args.head_steps} steps)",
               f"after: continued ({args.continue_steps} steps)"]
    seed_rows = [[f"seed {x['seed']}", f"{x['accuracy']:.4f}", f"{y['accuracy']:.4f}",
                  f"{100 * (y['accuracy'] - x['accuracy']):+.2f}", f"{x['macro_f1']:.4f}", f"{y['macro_f1']:.4f}"]
                 for x, y in zip(a, b)]
    delta = mean(b, "accuracy") - mean(a, "accuracy")
    seed_rows.append([f"mean of {len(a)}", f"{mean(a, 'accuracy'):.4f}", f"{mean(b, 'accuracy'):.4f}",
                      f"{100 * delta:+.2f}", f"{mean(a, 'macro_f1'):.4f}", f"{mean(b, 'macro_f1'):.4f}"])
    wins = sum(y["accuracy"] >= x["accuracy"] for x, y in zip(a, b))
    lines = [common.machine_line(), "", f"## Continued pretraining ({args.continue_steps} steps x 32 blocks of {args.max_length})", "",
             common.markdown_table(columns, rows), "",
             f"## IMDB fine-tuning ({args.finetune_examples} train reviews, {a[0]['examples']} test reviews)", "",
             common.markdown_table(["", "(a) packaged: accuracy", "(b) continued: accuracy", "(b) - (a), points",
                                    "(a) macro-F1", "(b) macro-F1"], seed_rows), "",
             f"(b) at least as accurate as (a) with {wins} of {len(a)} seeds"]
    values = dict(ppl_fresh_head=fresh["perplexity"], ppl_before=before["perplexity"], ppl_after=after["perplexity"],
                  ppl_ratio=after["perplexity"] / before["perplexity"],
                  mlm_acc_before=before["accuracy"], mlm_acc_after=after["accuracy"],
                  continue_tokens_per_s=cont_rate, acc_packaged=mean(a, "accuracy"),
                  acc_continued=mean(b, "accuracy"), acc_delta=delta, continued_wins=wins, seeds=len(a),
                  isa=",".join(common.machine_info()["flags"]) or "none")
    if scratch:
        curve = scratch["curve"]
        steps = sorted(curve)
        picks = sorted({steps[min(len(steps) - 1, round(i * (len(steps) - 1) / 6))] for i in range(7)})
        lines += ["", f"## From scratch (BERT-tiny, vocabulary {scratch['vocab']}, {args.scratch_steps} steps)", "",
                  common.markdown_table(["step", *map(str, picks)], [["train loss", *[f"{curve[s]:.3f}" for s in picks]]]),
                  "", f"held-out: perplexity {scratch['dev']['perplexity']:.1f}, masked-token accuracy "
                  f"{scratch['dev']['accuracy']:.3f}; training {scratch['tokens_per_s']:.0f} tokens/s"]
        values.update(scratch_loss_first=curve[steps[0]], scratch_loss_last=curve[steps[-1]],
                      scratch_ppl=scratch["dev"]["perplexity"], scratch_tokens_per_s=scratch["tokens_per_s"])
    lines += ["", f"total wall time {seconds / 60:.1f} min" + (" (--quick: not a measurement)" if args.quick else "")]
    values.update(minutes=seconds / 60, quick=int(args.quick))
    return "\n".join(lines), common.result_line(**values)


if __name__ == "__main__":
    main()
