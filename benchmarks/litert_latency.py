"""Batch-1 latency of exported ``.tflite`` classifiers on the machine you will deploy to.

Needs only ``numpy`` and ``ai-edge-litert`` (no TensorFlow, no tfllm), so it runs on a server or
an ARM board where the training stack is not installed. Make the inputs once where tfllm is
installed (the first N texts of a data file, tokenized as the export will see them), copy them
and the models over, then time:

    python benchmarks/litert_latency.py --make-inputs runs/sst2/export ../shared/data/sst2/dev.tsv inputs.npz
    python benchmarks/litert_latency.py inputs.npz model.tflite model_int8.tflite model_qat.tflite --threads 1

Each text runs at its own length (no padding), as ``tfllm.compare`` times it; the models are
interleaved over ``--rounds`` rounds so that machine drift hits them alike. The first model is the
baseline of the speed-up column. Prints the machine line (CPU model, ISA flags: int8 speed depends
on VNNI / AMX), a Markdown table and one ``RESULT`` line; ``--report NAME`` also writes them, with
a header (date, machine, command, git commit), to ``benchmarks/results/NAME.md``. Copy
``machine.py`` (standard library only) next to this file on the target machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (benchmarks/machine.py: standard library only)

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
    parser.add_argument("--report", metavar="NAME", help="also write benchmarks/results/NAME.md")
    args = parser.parse_args(argv)
    if args.make_inputs:
        make_inputs(*args.make_inputs, n=args.examples, column=args.column)
        return
    if not args.inputs or not args.models:
        parser.error("give the inputs .npz and at least one .tflite model")
    print(machine.machine_line(), flush=True)
    inputs = list(np.load(args.inputs).values())[:args.examples]
    times = time_models(inputs, args.models, args.threads, args.rounds)
    text = latency_report(times, args.models, inputs, args)
    print(text)
    if args.report:
        print("wrote", machine.write_report(args.report, text, f"LiteRT batch-1 latency, {args.threads} "
                                            f"thread(s)"))


def latency_report(times: dict, models: list[str], inputs: list, args) -> str:
    """Machine line, the Markdown table (speed-up vs the first model) and the RESULT line."""
    base = float(np.median(times[models[0]]))
    lines = [f"{machine.machine_line()}; {args.threads} thread(s), {len(inputs)} texts (median "
             f"{int(np.median([len(i) for i in inputs]))} tokens) x {args.rounds} rounds", "",
             "| model | size MB | p50 ms | p95 ms | speed-up vs first |", "|---|---|---|---|---|"]
    values = {}
    for path in models:
        p50, p95 = float(np.median(times[path])), float(np.percentile(times[path], 95))
        name = os.path.basename(path)
        lines.append(f"| {name} | {os.path.getsize(path) / 1e6:.1f} | {p50:.2f} | {p95:.2f} | "
                     f"{base / p50:.2f}x |")
        values[name.removesuffix(".tflite")] = round(base / p50, 3)
    flags = ",".join(machine.machine_info()["flags"]) or "none"
    lines += ["", f"RESULT threads={args.threads} isa={flags} "
              + " ".join(f"{k}_speedup={v}" for k, v in values.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
