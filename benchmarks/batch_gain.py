"""What batching gains for the model alone on this CPU, no HTTP: batch 1 against batches of the
texts a dynamic batcher would hold.

    python benchmarks/batch_gain.py [--run-dir runs/sst2] [--tflite FILE] [--batch 32]
                                       [--seconds 15] [--out FILE.json]

For each backend (the run's Keras model; its int8 TFLite export, default
``RUN/export/model_int8.tflite``), :class:`tfllm.inference.Predictor` (the object the service's
batching thread calls: tokenization, the forward pass, the task's rows) predicts the real SST-2
dev sentences in their file order, cycled:

* **batch 1**: one ``predict([s])`` per sentence, what the service does with batching off;
* **batch B, one pass**: ``predict(chunk, batch_size=B)`` on consecutive chunks of B sentences
  (the order a batcher receives them in), one forward pass padded to the chunk's longest text;
* **batch B, sorted groups of G**: the same chunks with ``batch_size=G``: the Predictor sorts the
  chunk by length and runs B/G passes, each padded only to its group's longest text;
* **batch B, one invoke per text** (TFLite, which runs each text at its own length unless
  ``TFLiteBackend.batch_texts`` is set): chunks of B in one ``predict`` call, so only the
  Predictor's per-call work (tokenizing, rows) is shared.

The Keras model runs in float32 and, on a CPU with bf16 instructions, in bfloat16 too (what the
service's ``--precision auto`` picks when batching; one text at a time it stays in float32).
Each row runs ``--seconds`` after a warm-up pass over every chunk shape. sentences/s is the
throughput; the ratio to the fastest batch-1 row of the backend is what batching gains for the
model alone, with nothing else running. It is not a bound on the service's gain: there a batch-1 forward pass (hundreds of small
ops on 2 threads) also competes for the cores with the event loop and the load generator, and
suffers more from it than a few large passes do (``benchmarks/serve.py`` prints both).

Prints the machine line, a Markdown table and one ``RESULT`` line; ``--out`` also writes the rows
as JSON (``benchmarks/serve.py`` runs this script and quotes it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402  (imports tfllm first: Keras 2)
from tfllm.hardware import bf16_hardware  # noqa: E402
from tfllm.inference import Predictor  # noqa: E402
from tfllm.serve.config import Settings  # noqa: E402

# Shared with benchmarks/serve.py: the SST-2 dev sentences and the fine-tuned run it serves.
DEV_TSV = common.SHARED_DATA / "sst2" / "dev.tsv"
DEFAULT_RUN = common.ROOT / "runs" / "sst2"
DEFAULT_TFLITE = Path("export") / "model_int8.tflite"  # inside the run directory


def read_sentences(data: Path) -> list[str]:
    """The non-empty ``sentence`` column of a TSV file (SST-2 dev: 872 sentences)."""
    sentences = []
    with open(data, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if "sentence" not in header:
            sys.exit(f"error: {data} has no 'sentence' column (header: {header})")
        column = header.index("sentence")
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) > column and fields[column].strip():
                sentences.append(fields[column])
    if not sentences:
        sys.exit(f"error: {data} has no sentences")
    return sentences


def chunks(sentences: list[str], size: int) -> list[list[str]]:
    """Consecutive chunks of ``size`` sentences (the last, shorter one dropped)."""
    return [sentences[i:i + size] for i in range(0, len(sentences) - size + 1, size)]


def throughput(predictor: Predictor, batches: list[list[str]], group: int, seconds: float) -> float:
    """Sentences per second predicting ``batches`` in turn (cycled) for about ``seconds``."""
    for batch in batches:  # warm-up: every shape traced / every interpreter size allocated
        predictor.predict(batch, batch_size=group)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in batches:
            predictor.predict(batch, batch_size=group)
            done += len(batch)
            if time.perf_counter() - start >= seconds:
                break
    return done / (time.perf_counter() - start)


def measure(name: str, predictor: Predictor, sentences: list[str], batch: int, groups: list[int],
            seconds: float) -> list[dict]:
    precision = predictor.precision
    rows = [{"backend": name, "precision": precision, "policy": "batch 1", "batch": 1, "group": 1,
             "sentences_per_s": throughput(predictor, chunks(sentences, 1), 1, seconds)}]
    one_at_a_time = not getattr(predictor.backend, "groups_texts", True)  # TFLite: one invoke per text
    for group in [batch] if one_at_a_time else [batch, *groups]:
        policy = (f"batch {batch}, one invoke per text" if one_at_a_time else
                  f"batch {batch}, one pass" if group == batch else f"batch {batch}, sorted groups of {group}")
        rows.append({"backend": name, "precision": precision, "policy": policy, "batch": batch, "group": group,
                     "sentences_per_s": throughput(predictor, chunks(sentences, batch), group, seconds)})
    for row in rows:
        print(f"{name:7s} {precision:11s} {row['policy']:32s} {row['sentences_per_s']:8.1f} sentences/s", flush=True)
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's ``ratio``: its throughput over the backend's fastest batch-1 row (any precision)."""
    for row in rows:
        single = max(r["sentences_per_s"] for r in rows if r["backend"] == row["backend"] and r["batch"] == 1)
        row["ratio"] = row["sentences_per_s"] / single
    return rows


def keras_precisions() -> list[str]:
    """float32, and bfloat16 where the CPU has bf16 instructions (what ``auto`` picks when batching)."""
    return ["float32"] + (["bfloat16"] if bf16_hardware() else [])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN, help="fine-tuned run (default runs/sst2)")
    parser.add_argument("--tflite", type=Path, help="its int8 TFLite export (default RUN/export/model_int8.tflite)")
    parser.add_argument("--data", type=Path, default=DEV_TSV, help="TSV with a 'sentence' column (SST-2 dev)")
    parser.add_argument("--backends", default="keras,tflite", help="comma list of keras, tflite")
    parser.add_argument("--batch", type=int, default=32, help="the batcher's max batch size (32)")
    group = Settings().forward_batch_size
    parser.add_argument("--groups", default=str(group),
                        help=f"comma list of sorted group sizes (the server's --forward-batch-size, {group})")
    parser.add_argument("--seconds", type=float, default=15, help="seconds measured per row (15)")
    parser.add_argument("--out", type=Path, help="also write the rows here as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(common.machine_line(), flush=True)
    sentences = read_sentences(args.data)
    groups = [int(g) for g in args.groups.split(",") if g.strip()]
    paths = {"keras": args.run_dir, "tflite": args.tflite or args.run_dir / DEFAULT_TFLITE}
    rows = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        for precision in keras_precisions() if name == "keras" else ["float32"]:
            predictor = Predictor.load(paths[name], precision=precision)
            rows += measure(name, predictor, sentences, args.batch, groups, args.seconds)
    rows = with_ratios(rows)
    print(common.markdown_table(["backend", "precision", "policy", "sentences/s", "x batch 1"],
                                [[r["backend"], r["precision"], r["policy"], f"{r['sentences_per_s']:.1f}",
                                  f"{r['ratio']:.2f}"] for r in rows]))
    best = {}
    for row in rows:
        best[row["backend"]] = max(best.get(row["backend"], 0.0), row["ratio"])
    print(common.result_line(**{f"{name}_model_gain": round(value, 3) for name, value in best.items()}))
    if args.out:
        args.out.write_text(json.dumps({"machine": common.machine_line(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
