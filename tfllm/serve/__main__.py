"""Serve finished runs over HTTP: ``python -m tfllm.serve RUN_DIR [--model NAME=PATH ...]``.

    python -m tfllm.serve runs/sst2                                 # http://127.0.0.1:8501, model "sst2"
    python -m tfllm.serve runs/sst2 --backend tflite                # runs/sst2/export/model.tflite (LiteRT)
    python -m tfllm.serve runs/sst2 --tflite runs/sst2/export/model_int8.tflite
    python -m tfllm.serve runs/sst2 --backend saved_model           # runs/sst2/export/saved_model/1
    python -m tfllm.serve --model sst2=runs/sst2 --model ner=runs/conll --port 0   # a free port
    python -m tfllm.serve runs/sst2 --workers 2                     # 2 processes on one port

It prints ``serving NAME[, NAME] on http://HOST:PORT`` once listening; models load in the
background and ``/readyz`` turns 200 when all are warmed up. SIGTERM (or Ctrl+C) stops accepting,
answers what is queued and exits 0. A bad argument or a run that cannot be served is one
``error:`` line and exit 2. ``--workers N`` runs N processes, each with its own copy of the
models, on the one port (:class:`~tfllm.serve.server.Workers`). See deploy/README.md for the API,
metrics, alerts and deployment.
"""
from __future__ import annotations

import argparse
import logging
import sys

from tfllm.cli import main_guard, parse_command_line, setup_logging
from tfllm.errors import TfllmError
from tfllm.inference import PRECISIONS
from tfllm.serve.config import BACKENDS, Settings, check_workers, model_specs
from tfllm.serve.server import Workers, bind, serve, url_of

log = logging.getLogger("tfllm.serve")


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    parser = argparse.ArgumentParser(prog="python -m tfllm.serve", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a finished run directory (served under its name), "
                        "or an exported .tflite / export/saved_model/1")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="one more model to serve as NAME (repeatable)")
    parser.add_argument("--backend", choices=BACKENDS, help="how run directories are served (default keras)")
    parser.add_argument("--tflite", metavar="FILE", help="the RUN_DIR's .tflite to serve (default "
                        "export/model.tflite); implies --backend tflite")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8501, help="port (8501, TF Serving's REST port; 0: a free one)")
    parser.add_argument("--workers", type=int, default=1, help="processes serving the port, each loading its "
                        "own copy of the models (1)")
    flag = lambda name, kind, default, text: parser.add_argument(  # noqa: E731
        name, type=kind, default=default, help=f"{text} ({default:g})")
    flag("--max-batch-size", int, d.max_batch_size, "texts per batch; 1 turns batching off")
    flag("--forward-batch-size", int, d.forward_batch_size, "a batch runs as length-sorted forward passes "
         "of at most this many texts (less padding)")
    flag("--pad-to-multiple-of", int, d.pad_to_multiple_of, "forward passes are padded to a multiple of "
         "this many tokens (fewer shapes: memory stays bounded in a long-running server; 1: fastest)")
    flag("--batch-threads", int, d.batch_threads, "batches running at once, each in its own thread "
         "(TF Serving's num_batch_threads; a TFLite model always runs one)")
    flag("--max-latency-ms", float, d.max_latency_ms, "how long a batch waits for more requests")
    flag("--max-queue", int, d.max_queue, "requests waiting per model before 503")
    flag("--timeout-ms", float, d.timeout_ms, "a request not answered in time gets 504")
    flag("--max-instances", int, d.max_instances, "texts per request")
    flag("--max-chars", int, d.max_chars, "characters per text")
    flag("--max-body-bytes", int, d.max_body_bytes, "request body size")
    parser.add_argument("--precision", default=d.precision,
                        help="what a run's Keras model computes in: auto (bfloat16 on a CPU with bf16 "
                        "instructions when batching, else float32), float32 or bfloat16 (auto)")
    parser.add_argument("--warm-up", default=d.warm_up,
                        help="before /readyz turns 200: one dummy batch (one), or every shape a forward pass "
                        "can have (all: seconds longer, then no first-shape delays and resident memory "
                        "stays flat; for production) (one)")
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    return parser


def settings_of(args) -> Settings:
    return Settings(args.max_batch_size, args.max_latency_ms, args.max_queue, args.timeout_ms,
                    args.max_instances, args.max_chars, args.max_body_bytes, args.forward_batch_size,
                    args.precision, args.pad_to_multiple_of, args.warm_up,
                    args.batch_threads).check()


@main_guard(memory_hint="lower --max-batch-size or --max-instances")
def main(argv=None):
    args = parse_command_line(build_parser(), argv)
    settings = settings_of(args)
    workers = check_workers(args.workers)
    specs = model_specs(args.run_dir, args.model, args.backend, args.tflite)
    exported = [s.name for s in specs if s.backend != "keras"]
    if args.precision == "bfloat16" and exported:
        raise TfllmError(f"--precision bfloat16 is for a run's Keras model; {exported[0]} is served from an "
                         "exported file, which computes as it was exported")
    setup_logging()
    sock = bind(args.host, args.port)
    print(f"serving {', '.join(s.name for s in specs)} on {url_of(sock)}", flush=True)
    if workers == 1:
        serve(specs, settings, sock, args.access_log)
    else:
        Workers(specs, settings, sock, workers, args.access_log).run()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
