"""Speed against the Hugging Face PyTorch ``Trainer`` on the same CPU, in one run.

    bash benchmarks/peer_setup.sh          # once: the peer's own venv (.venv-peer, torch 2.13 CPU)
    python benchmarks/speed.py [--examples 3200] [--mlm-steps 30] [--rounds 3] [--out DIR] [--no-peer]
                               [--report NAME]

    # AVX2 code paths on an AVX-512 CPU (both sides; the machine line names the caps):
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 \
        python benchmarks/speed.py --report speed-avx2-capped

Everything below runs in this one invocation on this one machine (its CPU and ISA flags are
printed first); the peer runs as subprocesses of ``.venv-peer/bin/python benchmarks/peer_torch.py``
so that torch never enters tfllm's environment. Both sides use the packaged MiniLM-L6-H384.

1. **Fine-tuning**, the same slice: ``--examples`` SST-2 training sentences (seeded shuffle, seed
   42), batch 32, max_length 66, one epoch (100 steps for 3,200), lr 1e-4 with 6% warm-up, weight
   decay 0.01, clipping at 1.0. tfllm: ``run_training`` (the real Trainer, length bucketing on),
   throughput from its TensorBoard ``examples_per_sec`` windows (``log_every`` 10) after the first
   (tracing). Rows: the optimizer before this change (``train.fused_optimizer=false``) and after,
   in float32 and, on a CPU with bf16 instructions, ``mixed_bfloat16``. The peer: ``Trainer``
   with and without ``group_by_length``, ``bf16`` off and on; seq/s over the steps after the first.
   Then ``--rounds`` - 1 more paired rounds per precision: the peer's best configuration
   (``group_by_length``) and tfllm back to back, alternating which runs first. The fine-tuning
   targets use the median of the rounds' ratios (the main table's pair is round 1): on these
   shared VMs the same code's rate moves by a third between runs minutes apart.
2. **Inference**: the SST-2 dev set (872 sentences) from raw text, batch 64, float32: tfllm's
   ``Predictor.predict`` (a model fine-tuned in step 1) against the peer's tokenizer +
   ``Trainer.predict``; both after a warm-up call.
3. **Masked-LM pretraining**: blocks of 128 tokens of IMDB's unlabelled reviews, batch 32, 15%
   masking: tfllm's ``configs/mlm_imdb_continue.yaml`` for ``--mlm-steps`` steps against the peer's
   ``Trainer`` + ``DataCollatorForLanguageModeling`` on blocks cut the same way; tokens/s.
4. **Yardstick**: ``tf.matmul`` at the model's own shapes (tokens per batch x 384 by 384 x 384,
   384 x 1536 and 1536 x 384, as in one encoder layer) in float32 and bfloat16; each training row's
   FLOP/s (``6 N L + 12 n_layers d L^2`` per sequence, L the padded length, less the last layer's
   positions after [CLS] for tfllm's fine-tuning, which does not compute them) as a fraction of it.

Prints a Markdown report ending in one ``RESULT`` line; writes it to ``--out/speed.md`` and, with a
header, to ``benchmarks/results/speed.md``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402  (imports tfllm first: Keras 2)
from benchmarks.finetune import plan_padding, training_windows  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfllm.cli import setup_logging  # noqa: E402
from tfllm.config import load_config  # noqa: E402
from tfllm.data.tokenization import load_tokenizer  # noqa: E402
from tfllm.hardware import bf16_hardware  # noqa: E402
from tfllm.inference import Predictor  # noqa: E402
from tfllm.models.checkpoints import resolve_checkpoint  # noqa: E402
from tfllm.tasks import task_for  # noqa: E402
from tfllm.train import run_training  # noqa: E402

log = logging.getLogger("tfllm")
SST2 = common.SHARED_DATA / "sst2"
IMDB_UNSUP = common.SHARED_DATA / "imdb" / "unsup.txt"
PEER_PYTHON = common.ROOT / ".venv-peer" / "bin" / "python"
PEER = common.ROOT / "benchmarks" / "peer_torch.py"
CHECKPOINT = "packaged:minilm-l6"
BATCH, MAX_LENGTH, BLOCK = 32, 66, 128
LAYERS, HIDDEN, FFN = 6, 384, 1536
POLICY = {"fp32": "none", "bf16": "mixed_bfloat16"}


@dataclass
class Row:
    job: str
    system: str
    precision: str
    rate: float            # sequences/s (tokens/s for mlm)
    unit: str = "seq/s"
    padded_length: float = 0.0
    note: str = ""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=3200, help="SST-2 training sentences in the slice")
    parser.add_argument("--mlm-steps", type=int, default=30)
    parser.add_argument("--mlm-documents", type=int, default=800, help="IMDB reviews to cut blocks from")
    parser.add_argument("--out", default="/tmp/tfllm-speed")
    parser.add_argument("--no-peer", action="store_true", help="tfllm rows only")
    parser.add_argument("--rounds", type=int, default=3, help="paired fine-tuning rounds (the best peer "
                        "configuration and tfllm back to back); the targets use their median ratio (3)")
    parser.add_argument("--report", default="speed",
                        help="name of the report under benchmarks/results/ (default speed)")
    return parser.parse_args(argv)


# --- data -------------------------------------------------------------------------------------
def write_slice(path: Path, examples: int) -> Path:
    """The first ``examples`` SST-2 training rows after a seeded shuffle, as a TSV both sides read."""
    with open(SST2 / "train.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    order = np.random.default_rng(42).permutation(len(rows))[:examples]
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{rows[i]['sentence']}\t{rows[i]['label']}\n" for i in order)
    return path


def write_blocks(path: Path, documents: int) -> Path:
    """IMDB reviews tokenized, joined with [SEP] and cut into [CLS] + 126 + [SEP] blocks of ids."""
    tokenizer = load_tokenizer(resolve_checkpoint(CHECKPOINT))
    with open(IMDB_UNSUP, encoding="utf-8") as f:
        texts = [line.strip() for _, line in zip(range(documents), f) if line.strip()]
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.sep_token_id]
    width = BLOCK - 2
    blocks = [[tokenizer.cls_token_id, *stream[i:i + width], tokenizer.sep_token_id]
              for i in range(0, len(stream) - width + 1, width)]
    path.write_text("\n".join(" ".join(map(str, b)) for b in blocks) + "\n")
    return path


# --- tfllm --------------------------------------------------------------------------------------
def tfllm_finetune(out: Path, slice_file: Path, precision: str, fused: bool) -> tuple[Row, Path]:
    name = f"finetune_{precision}_{'fused' if fused else 'keras_adamw'}"
    cfg = load_config(common.ROOT / "configs" / "sst2_minilm.yaml", [
        f"data.train_file={slice_file}", f"data.dev_file={SST2 / 'dev.tsv'}", "train.epochs=1",
        "train.log_every=10", "train.eval_every=100000", "train.checkpoint_every=100000",
        "train.restore_best=false", f"train.mixed_precision={POLICY[precision]}",
        f"train.fused_optimizer={str(fused).lower()}", f"output_dir={out / name}"])
    run_dir = run_training(cfg, overwrite=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    windows = training_windows(run_dir, metrics, cfg)
    note = ("fused AdamW (one XLA update)" if fused else "Keras AdamW (before)") + \
           f"; dev acc {metrics['dev']['accuracy']:.4f} after {metrics['steps']} steps"
    return Row("fine-tune", "tfllm", precision, windows["seq_per_s"], note=note,
               padded_length=plan_padded_length(cfg)), run_dir


def plan_padded_length(cfg) -> float:
    """Mean padded length of the run's training batches (bucketed, to cfg.padding_multiple)."""
    train = task_for(cfg).load_data().train
    return plan_padding(train.encoded, train.plan.epoch(0), cfg.padding_multiple)["mean_length"]


def tfllm_predict(run_dir: Path) -> Row:
    texts = read_sentences(SST2 / "dev.tsv")
    predictor = Predictor.load(run_dir)
    predictor.predict(texts[:64])  # warm-up: traces the forward function
    start = time.perf_counter()
    predictor.predict(texts, batch_size=64)
    seconds = time.perf_counter() - start
    return Row("predict", "tfllm", "fp32", len(texts) / seconds, note="Predictor.predict, raw text, batch 64")


def tfllm_mlm(out: Path, steps: int, documents: int, precision: str) -> Row:
    cfg = load_config(common.ROOT / "configs" / "mlm_imdb_continue.yaml", [
        f"data.train_file={IMDB_UNSUP}", f"data.max_documents={documents}", f"train.max_steps={steps}",
        "train.log_every=5", "train.eval_every=100000", "train.checkpoint_every=100000",
        "train.restore_best=false", "data.max_dev_examples=32", f"train.mixed_precision={POLICY[precision]}",
        f"output_dir={out / f'mlm_{precision}'}"])
    run_dir = run_training(cfg, overwrite=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    windows = training_windows(run_dir, metrics, cfg)
    return Row("masked-LM", "tfllm", precision, windows["seq_per_s"] * BLOCK, unit="tokens/s",
               padded_length=BLOCK, note=f"{steps} steps, blocks of {BLOCK}")


def read_sentences(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


# --- the peer -----------------------------------------------------------------------------------
def peer(job: str, *flags: str) -> dict:
    """One ``peer_torch.py`` job in the peer's venv; its ``PEER {...}`` JSON line."""
    command = [str(PEER_PYTHON), str(PEER), job, "--checkpoint", resolve_checkpoint(CHECKPOINT), *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PEER ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"peer {job} {' '.join(flags)} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("PEER "):])


def peer_finetune(slice_file: Path, precision: str, grouped: bool) -> tuple[Row, dict]:
    """The peer's ``Trainer`` fine-tuning on the slice; its row and versions."""
    flags = ["--train", str(slice_file)] + (["--bf16"] if precision == "bf16" else []) + \
        (["--group-by-length"] if grouped else [])
    result = peer("finetune", *flags)
    versions = {k: result[k] for k in ("torch", "transformers", "threads")}
    return Row("fine-tune", "PyTorch Trainer", precision, result["seq_per_s"],
               note="group_by_length=True" if grouped else "random batches"), versions


def peer_rows(slice_file: Path, blocks: Path, precisions: list[str], mlm_steps: int) -> tuple[list[Row], dict]:
    rows, versions = [], {}
    for precision in precisions:
        bf16 = ["--bf16"] if precision == "bf16" else []
        for grouped in (False, True):
            row, versions = peer_finetune(slice_file, precision, grouped)
            rows.append(row)
        result = peer("mlm", "--corpus", str(blocks), "--steps", str(mlm_steps), *bf16)
        rows.append(Row("masked-LM", "PyTorch Trainer", precision, result["tokens_per_s"], unit="tokens/s",
                        padded_length=BLOCK, note="DataCollatorForLanguageModeling"))
    result = peer("predict", "--dev", str(SST2 / "dev.tsv"))
    rows.append(Row("predict", "PyTorch Trainer", "fp32", result["seq_per_s"],
                    note="tokenizer + Trainer.predict, batch 64"))
    return rows, versions


# --- paired rounds ------------------------------------------------------------------------------
@dataclass
class Round:
    number: int
    precision: str
    peer: float    # seq/s, the peer's Trainer with group_by_length (its best configuration)
    tfllm: float   # seq/s, tfllm's Trainer (fused optimizer)
    first: str     # which ran first

    @property
    def ratio(self) -> float:
        return self.tfllm / self.peer


def paired_rounds(out: Path, slice_file: Path, precisions: list[str], rows: list[Row], count: int) -> list[Round]:
    """Fine-tuning ratios from ``count`` rounds: round 1 is the main table's (peer first, tfllm
    minutes later); each further round runs the peer's best configuration and tfllm back to back,
    alternating which goes first, so a slow spell of a shared VM falls on both or on neither."""
    found = []
    for precision in precisions:
        peer_row = next(r for r in rows if r.job == "fine-tune" and r.system == "PyTorch Trainer"
                        and r.precision == precision and r.note == "group_by_length=True")
        ours = next(r for r in rows if r.job == "fine-tune" and r.system == "tfllm"
                    and r.precision == precision and r.note.startswith("fused"))
        found.append(Round(1, precision, peer_row.rate, ours.rate, "peer"))
    for number in range(2, count + 1):
        for precision in precisions:
            tfllm_first = number % 2 == 0
            rates = {}
            for system in (("tfllm", "peer") if tfllm_first else ("peer", "tfllm")):
                if system == "peer":
                    rates[system] = peer_finetune(slice_file, precision, grouped=True)[0].rate
                else:
                    rates[system] = tfllm_finetune(out, slice_file, precision, fused=True)[0].rate
            found.append(Round(number, precision, rates["peer"], rates["tfllm"], "tfllm" if tfllm_first else "peer"))
            print(f"round {number} {precision}: peer {rates['peer']:.1f}, tfllm {rates['tfllm']:.1f} seq/s", flush=True)
    return found


def rounds_table(rounds: list[Round]) -> str:
    return common.markdown_table(
        ["round", "precision", "ran first", "PyTorch Trainer (group_by_length) seq/s", "tfllm seq/s", "ratio"],
        [(r.number, r.precision, r.first, f"{r.peer:.1f}", f"{r.tfllm:.1f}", f"{r.ratio:.2f}x") for r in rounds])


# --- yardstick ----------------------------------------------------------------------------------
def layer_matmul_rate(tokens: int, dtype, repeats: int = 20) -> float:
    """FLOP/s of one encoder layer's six dense matmuls at ``tokens`` rows (median of repeats)."""
    shapes = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, FFN), (FFN, HIDDEN)]
    inputs = [(tf.cast(tf.random.normal([tokens, k]), dtype), tf.cast(tf.random.normal([k, n]), dtype))
              for k, n in shapes]
    flops = sum(2 * tokens * k * n for k, n in shapes)

    @tf.function
    def layer():
        return [tf.matmul(a, b) for a, b in inputs]

    for _ in range(3):
        [t.numpy() for t in layer()]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [t.numpy() for t in layer()]
        times.append(time.perf_counter() - start)
    return flops / float(np.median(times))


# tfllm's classifier computes its last layer's query, attention output and feed-forward block
# for [CLS] alone (tfllm/models/first_token.py): parameters it multiplies once, not per token
LAST_LAYER_FIRST_TOKEN_ONLY = 2 * (HIDDEN * HIDDEN + HIDDEN) + (HIDDEN * FFN + FFN) + (FFN * HIDDEN + HIDDEN)


def training_flops(row: Row, params: int = 10_795_394) -> float:
    """FLOP/s the row's system performs (tfllm's fine-tuning skips part of the last layer)."""
    length = row.padded_length
    per_sequence = common.training_flops_per_sequence(params, LAYERS, HIDDEN, length, length ** 2)
    if row.job == "fine-tune" and row.system == "tfllm":
        per_sequence -= 6.0 * LAST_LAYER_FIRST_TOKEN_ONLY * (length - 1) + 12.0 * HIDDEN * (length ** 2 - length)
    sequences = row.rate / (BLOCK if row.unit == "tokens/s" else 1)
    return per_sequence * sequences


# --- report -------------------------------------------------------------------------------------
def best(rows: list[Row], job: str, system: str, precision: str) -> Row | None:
    found = [r for r in rows if r.job == job and r.system == system and r.precision == precision]
    return max(found, key=lambda r: r.rate) if found else None


def report(rows: list[Row], yard: dict, precisions: list[str], versions: dict, args,
           rounds: list[Round]) -> tuple[str, dict]:
    table = []
    for row in rows:
        peer_best = best(rows, row.job, "PyTorch Trainer", row.precision)
        ratio = f"{row.rate / peer_best.rate:.2f}x" if peer_best else "–"
        fraction = ""
        if row.padded_length and row.job != "predict":
            rate = yard[(row.precision, round(BATCH * row.padded_length))]
            fraction = f"{100 * training_flops(row) / rate:.0f}% of {rate / 1e9:.0f} GFLOP/s"
        table.append((row.job, row.system, row.precision, f"{row.rate:,.1f} {row.unit}", ratio,
                      f"{row.padded_length:.1f}" if row.padded_length else "", fraction, row.note))
    text = common.markdown_table(["job", "system", "precision", "throughput", "vs best peer (same job, precision)",
                                  "mean padded length", "training FLOP/s of layer matmul rate", "notes"], table)
    results = {}
    for job, key in (("fine-tune", "finetune"), ("predict", "predict"), ("masked-LM", "mlm")):
        for precision in precisions + (["fp32"] if job == "predict" else []):
            ours, theirs = best(rows, job, "tfllm", precision), best(rows, job, "PyTorch Trainer", precision)
            if ours and theirs:
                results[f"{key}_{precision}_ratio"] = ours.rate / theirs.rate
    for precision in precisions:
        ratios = [r.ratio for r in rounds if r.precision == precision]
        if ratios:
            results[f"finetune_{precision}_ratio"] = float(np.median(ratios))
            results[f"finetune_{precision}_ratio_min"] = min(ratios)
            results[f"finetune_{precision}_ratio_max"] = max(ratios)
    targets = []
    for precision in precisions:
        ratio = results.get(f"finetune_{precision}_ratio")
        if ratio is not None:
            count = sum(r.precision == precision for r in rounds)
            which = f"median of {count} paired rounds" if count > 1 else "one round"
            targets.append(f"fine-tuning {precision} >= 1.1x the best peer: {ratio:.2f}x, {which} "
                           f"({'met' if ratio >= 1.1 else 'NOT MET'})")
        ratio = results.get(f"mlm_{precision}_ratio")
        if ratio is not None:
            targets.append(f"masked-LM {precision} >= 1.0x: {ratio:.2f}x ({'met' if ratio >= 1.0 else 'NOT MET'})")
    if "predict_fp32_ratio" in results:
        ratio = results["predict_fp32_ratio"]
        targets.append(f"inference fp32 >= 1.0x: {ratio:.2f}x ({'met' if ratio >= 1.0 else 'NOT MET'})")
    lines = [common.machine_line(common.machine_info()),
             f"Peer: torch {versions.get('torch', '?')}, transformers {versions.get('transformers', '?')}, "
             f"{versions.get('threads', '?')} threads (its own venv, .venv-peer).", "", text, "",
             "Yardstick (median of 20): " + ", ".join(f"{p} at {t} tokens: {r / 1e9:.0f} GFLOP/s"
                                                     for (p, t), r in sorted(yard.items())),
             *(["", "Fine-tuning in paired rounds (rates of one VM move between minutes; each ratio "
                "compares two runs made back to back):", "", rounds_table(rounds)] if len(rounds) > len(precisions) else []),
             "", "Targets: " + "; ".join(targets) if targets else "Targets: peer not run"]
    return "\n".join(lines), results


def main(argv=None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    setup_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(common.machine_line(common.machine_info()), flush=True)
    precisions = ["fp32", "bf16"] if bf16_hardware() else ["fp32"]
    slice_file = write_slice(out / "sst2_slice.tsv", args.examples)
    blocks = write_blocks(out / "imdb_blocks.txt", args.mlm_documents)
    rows, versions = [], {}
    if not args.no_peer:
        if not PEER_PYTHON.exists():
            raise SystemExit("error: the peer's venv is missing; run: bash benchmarks/peer_setup.sh")
        peer_found, versions = peer_rows(slice_file, blocks, precisions, args.mlm_steps)
        rows += peer_found
    row, _ = tfllm_finetune(out, slice_file, "fp32", fused=False)
    rows.append(row)
    fp32_run = None
    for precision in precisions:
        row, run_dir = tfllm_finetune(out, slice_file, precision, fused=True)
        rows.append(row)
        fp32_run = fp32_run or run_dir
        rows.append(tfllm_mlm(out, args.mlm_steps, args.mlm_documents, precision))
    rows.append(tfllm_predict(fp32_run))
    rounds = paired_rounds(out, slice_file, precisions, rows, args.rounds) if not args.no_peer else []
    yard = {}
    for row in rows:
        if row.padded_length:
            tokens = round(BATCH * row.padded_length)
            for precision in precisions:
                if (precision, tokens) not in yard:
                    yard[(precision, tokens)] = layer_matmul_rate(tokens, tf.float32 if precision == "fp32"
                                                                  else tf.bfloat16)
    order = {"fine-tune": 0, "predict": 1, "masked-LM": 2}
    rows.sort(key=lambda r: (order[r.job], r.precision, r.system != "PyTorch Trainer"))
    text, results = report(rows, yard, precisions, versions, args, rounds)
    line = common.result_line(**{k: round(v, 3) for k, v in results.items()})
    text += "\n\n" + line
    print(text, flush=True)
    (out / "speed.md").write_text(text + "\n")
    common.write_report(args.report, text, "Speed against the Hugging Face PyTorch Trainer",
                        argv=sys.argv, started=started)


if __name__ == "__main__":
    main()
