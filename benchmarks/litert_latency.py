"""Batch-1 latency of exported ``.tflite`` classifiers on the machine you will deploy to.

Needs only ``numpy`` and ``ai-edge-litert`` (no TensorFlow, no tfllm), so it runs on a server or
an ARM board where the training stack is not installed. Make the inputs once where tfllm is
installed (the first N texts of a data file, tokenized as the export will see them), copy them
and the models over, then time:

    python benchmarks/litert_latency.py --make-inputs runs/sst2/export ../shared/data/sst2/dev.tsv inputs.npz
    python benchmarks/litert_latency.py inputs.npz model.tflite model_int8.tflite model_qat.tflite --threads 1

Each text runs at its own length (no padding), as ``tfllm.compare`` times it; the models are
interleaved over ``--rounds`` rounds so that machine drift hits them alike. The first model is the
baseline of the speed-up column. Prints a Markdown table and one ``RESULT`` line.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def make_inputs(export_dir: str, data_file: str, out: str, n: int, column: str) -> None:
    """Tokenize the first ``n`` texts of ``data_file`` with the export's tokenizer into ``out``."""
    import json

    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    meta = json.loads(open(os.path.join(export_dir, "model.json"), encoding="utf-8").read())
    texts = pd.read_csv(data_file, sep="\t" if data_file.endswith(".tsv") else ",")[column][:n]
    ids = [np.asarray(tokenizer(str(t), truncation=True, max_length=int(meta["max_length"]))["input_ids"],
                      np.int32) for t in texts]
    np.savez(out, *ids)
    print(f"wrote {out}: {len(ids)} texts, median {int(np.median([len(i) for i in ids]))} tokens")


def runner(path: str, threads: int):
    """A function running one int32 id sequence through the model (resizing when the length changes)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    details = {name: d for d in interpreter.get_input_details() for name in INPUT_NAMES
               if d["name"] in (name, f"{name}:0") or d["name"].endswith(f"_{name}:0")}
    output = interpreter.get_output_details()[0]["index"]
    shape = [None]

    def run(ids: np.ndarray):
        n = len(ids)
        if shape[0] != n:
            for d in details.values():
                interpreter.resize_tensor_input(d["index"], [1, n])
            interpreter.allocate_tensors()
            shape[0] = n
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        for name, d in details.items():
            interpreter.set_tensor(d["index"], feed[name].reshape(1, n))
        interpreter.invoke()
        return interpreter.get_tensor(output)
    return run


def cpu_summary() -> str:
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        flags = open("/proc/cpuinfo").read()
    names = [line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")]
    extras = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
              if f" {f}" in flags]
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, " \
           f"int8-relevant flags: {' '.join(extras) or 'none found'}"


def time_models(inputs: list, models: list[str], threads: int, rounds: int, warmup: int = 3) -> dict:
    runs = {path: runner(path, threads) for path in models}
    times = {path: [] for path in models}
    for _ in range(rounds):
        for path, run in runs.items():
            for ids in inputs[:warmup]:
                run(ids)
            for ids in inputs:
                start = time.perf_counter()
                run(ids)
                times[path].append((time.perf_counter() - start) * 1000)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="?", help="inputs .npz (from --make-inputs)")
    parser.add_argument("models", nargs="*", help=".tflite files; the first is the baseline")
    parser.add_argument("--make-inputs", nargs=3, metavar=("EXPORT_DIR", "DATA_FILE", "OUT_NPZ"))
    parser.add_argument("--column", default="sentence", help="--make-inputs: the text column")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.make_inputs:
        make_inputs(*args.make_inputs, n=args.examples, column=args.column)
        return
    if not args.inputs or not args.models:
        parser.error("give the inputs .npz and at least one .tflite model")
    inputs = list(np.load(args.inputs).values())[:args.examples]
    times = time_models(inputs, args.models, args.threads, args.rounds)
    base = float(np.median(times[args.models[0]]))
    print(f"{cpu_summary()}; {args.threads} thread(s), {len(inputs)} texts x {args.rounds} rounds\n")
    print("| model | size MB | p50 ms | p95 ms | speed-up vs first |\n|---|---|---|---|---|")
    values = {}
    for path in args.models:
        p50, p95 = float(np.median(times[path])), float(np.percentile(times[path], 95))
        name = os.path.basename(path)
        print(f"| {name} | {os.path.getsize(path) / 1e6:.1f} | {p50:.2f} | {p95:.2f} | {base / p50:.2f}x |")
        values[name.removesuffix(".tflite")] = round(base / p50, 3)
    print("\nRESULT threads=%d " % args.threads + " ".join(f"{k}_speedup={v}" for k, v in values.items()))


if __name__ == "__main__":
    main()
