"""Serving benchmark: ``python -m tfllm.serve`` under a real HTTP load generator (``wrk``).

    apt-get install -y wrk                                   # Debian's wrk 4.1 (LuaJIT scripting)
    python benchmarks/serve.py [--run-dir runs/sst2] [--tflite FILE] [--backends keras,tflite]
                               [--concurrency 1,8,32,128] [--duration 15] [--warmup 3]
                               [--soak-seconds 600] [--soak-backend keras|tflite|fastest]
                               [--model-seconds 10] [--out DIR]
    python benchmarks/serve.py --quick                       # smoke test: 5 s rows, c=1,8, 20 s soak

A full run takes about 17 minutes (4 servers x 4 concurrencies x 18 s, start-ups, the 10-minute
soak); ``--quick`` about 2.

1. **Configurations**, one server process at a time (``python -m tfllm.serve RUN --port 0``,
   started as a subprocess, its ``serving NAME on URL`` line parsed, ``/readyz`` awaited; stopped
   with SIGTERM afterwards): for each backend (the run's Keras model; its int8 TFLite export,
   ``--tflite``, default ``RUN/export/model_int8.tflite``), **batching off** (``--max-batch-size 1``:
   one request, one forward pass) and **dynamic batching** (``--max-batch-size 32
   --max-latency-ms 5 --forward-batch-size 16``, the server's defaults). Every server gets
   ``--max-queue 1024`` (c=128 is never refused for a full queue; a 503 would be counted, not
   hidden), ``--timeout-ms 30000`` (wrk's own ``--timeout`` is 60 s, so a slow answer is the server's 504, counted)
   and ``--warm-up all`` (as ``deploy/`` runs it: every forward-pass shape once before ready).
2. **Load**: ``wrk`` on loopback, ``POST /v1/models/NAME:predict`` with ``{"instances": [S]}``,
   S cycling through the real SST-2 dev sentences (872; each wrk thread starts elsewhere in the
   list), one sentence per request, keep-alive connections. A Lua script (written to a temporary
   directory) builds the requests, counts every HTTP status in a ``response()`` hook and prints one
   machine-readable ``TFLLM_WRK key=value ...`` line from ``done()``: requests, duration, latency
   percentiles (``latency:percentile(p)``), wrk's socket errors and the status counts. For each
   concurrency c (``--concurrency``): a ``--warmup`` run, then a ``--duration`` run that is
   measured; wrk uses 2 threads (1 at an odd c, such as c=1). Latency is wrk's: from writing the
   request to the end of the response, client side. req/s counts 2xx answers only.
3. **Mean batch size**: ``/metrics`` is scraped before and after each measured run; the
   ``tfllm_serve_batch_size`` histogram's sum / count deltas are the texts per batch the
   server actually ran (1.0 with batching off; more when dynamic batching batched).
4. **Soak**: a fresh server of the soak backend (``--soak-backend``: ``keras`` by default,
   ``tflite``, or ``fastest``, the one whose dynamic-batching peak was higher) with dynamic
   batching, driven for ``--soak-seconds`` (600) at 70% (``--soak-fraction``) of that backend's
   peak dynamic-batching throughput measured in step 2, by ``--soak-connections`` (32) paced
   connections. The server's resident memory (``VmRSS`` of ``/proc/PID/status``) is sampled every
   ``--rss-interval`` (10) s: start, end, max, and the slope of a least-squares line over the
   second half, MB per minute (the first half is allocator and cache warm-up).

**Rate pacing.** wrk itself cannot hold a rate. wrk2 (``-R``) is not packaged in Debian, and Debian's
``hey`` (``hey -q``) sends one fixed body (``-d`` / ``-D``), so it cannot cycle through the dev
sentences, and its ``-q`` is an integer rate per worker. So the soak uses wrk with a Lua
``delay()`` hook, which wrk calls before each request a connection sends: each wrk thread keeps an
absolute schedule of send slots 1000 * threads / rate ms apart (the threads' schedules offset by
half a slot), every call claims the next slot and waits until it (wrk's delay is in whole ms, but
the schedule is absolute, so rounding does not accumulate). A slot already past is sent at once,
so a stall is followed by catch-up (open loop, as wrk2), and a send more than 10 ms behind its
slot is counted as *late*: many late sends mean the connections could not keep up, and since wrk
times a request from its actual send, the latency then understates what a paced client sees
(coordinated omission); the report prints the late share.

**The machine.** wrk and the server share the machine's cores (2 here): the load generator's CPU
time is taken from the server's, as it would not be on separate machines. The numbers are this
run's, on this machine; compare ratios within a report.

**The model alone.** Before any server starts, ``benchmarks/batch_gain.py`` (its own process,
``--model-seconds`` a row) times ``Predictor.predict`` at batch 1 against chunks of
``--max-batch-size`` dev sentences, with nothing else running: what batching gains for the model
itself. The report prints that table beside the service's; the service can gain more, since its
batch-1 passes also compete with the event loop and wrk for the cores.

**Targets** (the issue's): dynamic batching >= 3x the throughput of batching off at c=32 (for each
backend; stated for 2 cores); soak p99 < 5x the p50 at c=1 (the soak backend with dynamic
batching); zero 5xx in the soak; and the soak's own conditions, no error of any kind (non-2xx,
socket errors, timeouts) and resident memory flat (second-half slope under ``--rss-slope-limit``,
1 MB/min). A miss is printed as NOT MET, never dropped.

Output: the machine line, the Markdown table, the ratios, the soak lines, the targets and one
``RESULT key=value ...`` line, written to ``--out/serve_benchmark.md`` (server logs beside it)
and, with a header (date, machine, command, git commit), to ``benchmarks/results/serve.md``
(not with ``--quick``, a smoke test).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402  (imports tfllm first: Keras 2)
from benchmarks.batch_gain import DEFAULT_RUN, DEFAULT_TFLITE, DEV_TSV, read_sentences  # noqa: E402

SERVE_FLAGS = ["--max-queue", "1024", "--timeout-ms", "30000", "--warm-up", "all"]
WRK_TIMEOUT_S = 60
READY_TIMEOUT_S = 600.0
LATE_MS = 10  # a paced send this far behind its slot is "late"
SERVING = re.compile(r"^serving (\S+) on (http://\S+)\s*$")

# wrk's Lua (LuaJIT). Arguments after "--": the bodies file (one JSON body per line), the request
# path, the total request rate (0: as fast as the connections go) and the wrk thread count.
WRK_LUA = r"""
local bodies_file, path, rate, nthreads
local requests, index = {}, 0
statuses, late, sent = {}, 0, 0
local threads, counter = {}, 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } tfllm_timespec;
int clock_gettime(int clk_id, tfllm_timespec *tp);
]]
local ts = ffi.new("tfllm_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval, next_slot = 0, nil

function init(args)
  bodies_file, path, rate, nthreads = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  for line in io.lines(bodies_file) do
    requests[#requests + 1] = wrk.format("POST", path, {["Content-Type"] = "application/json"}, line)
  end
  -- each thread starts at its own place in the sentence list
  index = math.floor((tid or 0) * #requests / nthreads)
  if rate > 0 then interval = 1000.0 * nthreads / rate end
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function delay()
  if interval <= 0 then return 0 end
  local now = now_ms()
  if next_slot == nil then next_slot = now + (tid or 0) * interval / nthreads end
  local wait = next_slot - now
  next_slot = next_slot + interval
  sent = sent + 1
  if wait < -LATE_MS then late = late + 1 end
  if wait <= 0 then return 0 end
  return math.floor(wait)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local out = {"TFLLM_WRK", "requests=" .. summary.requests, "duration_us=" .. summary.duration,
               "errors_connect=" .. summary.errors.connect, "errors_read=" .. summary.errors.read,
               "errors_write=" .. summary.errors.write, "errors_status=" .. summary.errors.status,
               "errors_timeout=" .. summary.errors.timeout,
               string.format("mean_us=%.1f", latency.mean), "max_us=" .. latency.max}
  for _, p in ipairs({50, 90, 95, 99, 99.9}) do
    out[#out + 1] = string.format("p%s_us=%d", p, latency:percentile(p))
  end
  local counts, late_total, sent_total = {}, 0, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses") or {}) do counts[code] = (counts[code] or 0) + n end
    late_total = late_total + (thread:get("late") or 0)
    sent_total = sent_total + (thread:get("sent") or 0)
  end
  out[#out + 1] = "paced_sends=" .. sent_total
  out[#out + 1] = "late_sends=" .. late_total
  for code, n in pairs(counts) do out[#out + 1] = "status_" .. code .. "=" .. n end
  io.write(table.concat(out, " ") .. "\n")
end
""".replace("LATE_MS", str(LATE_MS))


# --- the server ------------------------------------------------------------------------------
class ServerError(RuntimeError):
    pass


class Server:
    """``python -m tfllm.serve`` in a subprocess (its own session), logging to ``log_path``."""

    def __init__(self, run_dir: Path, backend: str, tflite: Optional[Path], batching: list[str], log_path: Path):
        self.argv = [sys.executable, "-m", "tfllm.serve", str(run_dir), "--port", "0", *batching, *SERVE_FLAGS]
        if backend == "tflite":
            self.argv += ["--tflite", str(tflite)]
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self.url = self.model = ""

    def __enter__(self) -> "Server":
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.log.write("$ " + " ".join(self.argv) + "\n")
        self.log.flush()
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=common.ROOT,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ServerError(f"the server exited with status {self.proc.returncode}; its log "
                              f"({self.log_path}) ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.url:
            self.check_alive()
            for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                match = SERVING.match(line)
                if match:
                    self.model, self.url = match.group(1).split(",")[0], match.group(2)
            if time.monotonic() > deadline:
                raise ServerError(f"no 'serving ... on URL' line within {READY_TIMEOUT_S:g} s")
            time.sleep(0.2)
        while http_status(self.url + "/readyz") != 200:
            self.check_alive()
            if time.monotonic() > deadline:
                raise ServerError(f"{self.url}/readyz not 200 within {READY_TIMEOUT_S:g} s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    @property
    def predict_path(self) -> str:
        return f"/v1/models/{self.model}:predict"

    def rss_mb(self) -> Optional[float]:
        """The server's resident memory (``VmRSS``), MB (None once it is gone)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as response:
            return response.read().decode("utf-8")

    def metrics(self) -> dict:
        """The counters this benchmark reads from ``/metrics``, for this server's model."""
        return parse_metrics(self.metrics_text(), self.model)

    def precision(self) -> str:
        """What the served model computes in (the ``precision`` label of ``tfllm_serve_model_info``)."""
        for line in self.metrics_text().splitlines():
            if line.startswith("tfllm_serve_model_info{"):
                labels = dict(LABELS.findall(line))
                if labels.get("model") == self.model:
                    return labels.get("precision", "?")
        return "?"


def http_status(url: str) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, model: str) -> dict:
    """``batch_sum``, ``batch_count`` and ``code_<code>`` (predict requests by HTTP code) of ``model``."""
    out = {"batch_sum": 0.0, "batch_count": 0.0}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"(\w+)(?:\{(.*)\})?\s+(\S+)", line)
        if not match:
            continue
        name, labels, value = match.group(1), dict(LABELS.findall(match.group(2) or "")), float(match.group(3))
        if labels.get("model") != model:
            continue
        if name == "tfllm_serve_batch_size_sum":
            out["batch_sum"] = value
        elif name == "tfllm_serve_batch_size_count":
            out["batch_count"] = value
        elif name == "tfllm_serve_requests_total" and labels.get("route") == "predict":
            out[f"code_{labels.get('code')}"] = value
    return out


def metrics_delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}


# --- the load generator ----------------------------------------------------------------------
@dataclass
class WrkResult:
    """One wrk run, from the Lua ``done()`` line."""
    values: dict
    seconds: float
    statuses: dict = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return int(self.values["requests"])

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code >= 500)

    @property
    def socket_errors(self) -> dict:
        return {k: int(self.values[f"errors_{k}"]) for k in ("connect", "read", "write", "timeout")
                if int(self.values[f"errors_{k}"])}

    @property
    def rps(self) -> float:
        """2xx answers per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def ms(self, percentile: str) -> float:
        return float(self.values[f"p{percentile}_us"]) / 1000

    def errors_text(self) -> str:
        parts = [f"{n}x {code}" for code, n in sorted(self.statuses.items()) if not 200 <= code < 300]
        parts += [f"{n} {kind}" for kind, n in self.socket_errors.items()]
        return ", ".join(parts) or "0"


def run_wrk(url: str, path: str, lua: Path, bodies: Path, connections: int, seconds: float,
            rate: float = 0.0, threads: Optional[int] = None) -> WrkResult:
    """wrk against ``url + path`` with ``connections`` connections for ``seconds`` s (paced to
    ``rate`` requests/s in total when positive)."""
    threads = threads or (2 if connections % 2 == 0 else 1)  # wrk gives each thread c / threads connections
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(lua), url + path,
           "--", str(bodies), path, f"{rate:.6g}", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + WRK_TIMEOUT_S + 120)
    line = next((l for l in done.stdout.splitlines() if l.startswith("TFLLM_WRK ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (status {done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    values = dict(item.split("=", 1) for item in line.split()[1:])
    statuses = {int(k[len("status_"):]): int(v) for k, v in values.items() if k.startswith("status_")}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", done.stdout)  # wrk's own count (>= 400)
    if non2xx and int(non2xx.group(1)) != sum(n for c, n in statuses.items() if c >= 400):
        raise RuntimeError(f"wrk's non-2xx count {non2xx.group(1)} differs from the Lua status counts "
                           f"{statuses}:\n{done.stdout}")
    return WrkResult(values, int(values["duration_us"]) / 1e6, statuses)


def write_inputs(folder: Path, data: Path) -> tuple[Path, Path, int]:
    """The Lua script and the request bodies (one JSON body per line, one dev sentence each)."""
    sentences = read_sentences(data)
    bodies = folder / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"instances": [s]}) + "\n" for s in sentences), encoding="utf-8")
    lua = folder / "sst2.lua"
    lua.write_text(WRK_LUA, encoding="utf-8")
    return lua, bodies, len(sentences)


# --- measurements ----------------------------------------------------------------------------
def model_gain(args) -> list[dict]:
    """The model alone, batch 1 vs batched (``benchmarks/batch_gain.py`` in its own process,
    before any server starts)."""
    if args.model_seconds <= 0:
        return []
    out = args.out / "model_gain.json"
    command = [sys.executable, str(Path(__file__).with_name("batch_gain.py")), "--run-dir", str(args.run_dir),
               "--tflite", str(args.tflite), "--data", str(args.data), "--backends", ",".join(args.backends),
               "--batch", str(args.max_batch_size), "--groups", str(args.forward_batch_size),
               "--seconds", f"{args.model_seconds:g}", "--out", str(out)]
    print("model alone:", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (args.out / "model_gain.log").write_text(done.stdout, encoding="utf-8")
    if done.returncode != 0:
        sys.exit(f"error: batch_gain.py failed (exit {done.returncode}); see {args.out / 'model_gain.log'}")
    return json.loads(out.read_text(encoding="utf-8"))["rows"]


@dataclass
class Row:
    backend: str
    batching: str  # "off" / "dynamic"
    concurrency: int
    wrk: WrkResult
    mean_batch: float
    server_codes: dict  # predict responses by HTTP code, from /metrics
    precision: str = "?"  # what the model computed in (the server's --precision auto decides)

    def errors_text(self) -> str:
        """wrk's errors, plus the server's non-200 answers if wrk saw none of them."""
        text = self.wrk.errors_text()
        server = {code: n for code, n in self.server_codes.items() if code != "200"}
        if server and text == "0":
            text = "server: " + ", ".join(f"{n}x {code}" for code, n in sorted(server.items()))
        return text


def batching_flags(args, batching: str) -> list[str]:
    """The server's flags for batching ``off`` (one request, one forward pass) or ``dynamic``."""
    if batching == "off":
        return ["--max-batch-size", "1"]
    return ["--max-batch-size", str(args.max_batch_size), "--max-latency-ms", f"{args.max_latency_ms:g}",
            "--forward-batch-size", str(args.forward_batch_size), "--batch-threads", str(args.batch_threads)]


def measure_config(args, backend: str, batching: str, lua: Path, bodies: Path, out: Path) -> list[Row]:
    rows = []
    with Server(args.run_dir, backend, args.tflite, batching_flags(args, batching),
                out / f"server_{backend}_{batching}.log") as server:
        print(f"{backend}, batching {batching}: {server.url} (pid {server.pid})", flush=True)
        for c in args.concurrency:
            run_wrk(server.url, server.predict_path, lua, bodies, c, args.warmup)
            before = server.metrics()
            result = run_wrk(server.url, server.predict_path, lua, bodies, c, args.duration)
            delta = metrics_delta(before, server.metrics())
            server.check_alive()
            mean_batch = delta["batch_sum"] / delta["batch_count"] if delta["batch_count"] else float("nan")
            codes = {k[5:]: int(v) for k, v in delta.items() if k.startswith("code_") and v}
            rows.append(Row(backend, batching, c, result, mean_batch, codes, server.precision()))
            print(f"  c={c}: {result.rps:.1f} req/s, p50 {result.ms(50):.1f} ms, p99 {result.ms(99):.1f} ms, "
                  f"mean batch {mean_batch:.2f}, errors {result.errors_text()}", flush=True)
    return rows


@dataclass
class Soak:
    backend: str
    peak: float
    rate: float
    connections: int
    seconds: float
    wrk: WrkResult
    rss: list  # (seconds since start, MB)
    mean_batch: float

    def slope_mb_per_min(self) -> float:
        """Least-squares slope of RSS over the second half of the soak, MB per minute."""
        half = [(t, m) for t, m in self.rss if t >= self.seconds / 2]
        if len(half) < 2:
            return float("nan")
        mt = sum(t for t, _ in half) / len(half)
        mm = sum(m for _, m in half) / len(half)
        var = sum((t - mt) ** 2 for t, _ in half)
        return float("nan") if var == 0 else 60 * sum((t - mt) * (m - mm) for t, m in half) / var


def soak(args, backend: str, peak: float, lua: Path, bodies: Path, out: Path) -> Soak:
    rate = args.soak_fraction * peak
    samples: list = []
    stop = threading.Event()
    with Server(args.run_dir, backend, args.tflite, batching_flags(args, "dynamic"),
                out / f"server_{backend}_soak.log") as server:
        print(f"soak: {backend}, dynamic batching, {rate:.1f} req/s ({args.soak_fraction:.0%} of "
              f"{peak:.1f}) for {args.soak_seconds:g} s: {server.url} (pid {server.pid})", flush=True)
        run_wrk(server.url, server.predict_path, lua, bodies, args.soak_connections, args.warmup, rate)
        before = server.metrics()
        start = time.monotonic()

        def sample():
            while True:
                rss = server.rss_mb()
                if rss is not None:
                    samples.append((time.monotonic() - start, rss))
                if stop.wait(args.rss_interval):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = run_wrk(server.url, server.predict_path, lua, bodies, args.soak_connections,
                             args.soak_seconds, rate)
        finally:
            stop.set()
            sampler.join()
        rss = server.rss_mb()
        if rss is not None:
            samples.append((time.monotonic() - start, rss))
        delta = metrics_delta(before, server.metrics())
        server.check_alive()
    mean_batch = delta["batch_sum"] / delta["batch_count"] if delta["batch_count"] else float("nan")
    return Soak(backend, peak, rate, args.soak_connections, args.soak_seconds, result, samples, mean_batch)


# --- the report ------------------------------------------------------------------------------
def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def report(args, rows: list[Row], soak_result: Optional[Soak], sentences: int, wrk_version: str,
           model_rows: list[dict]) -> str:
    info = common.machine_info()
    lines = [f"{common.machine_line(info)}; wrk and the server share these {info['cores']} cores "
             f"(wrk: 2 threads, 1 at an odd concurrency)", "",
             f"- Server: `python -m tfllm.serve {args.run_dir} --port 0 {' '.join(SERVE_FLAGS)}`, one process; "
             f"Keras = the run's model, computing in what `--precision auto` (the default) picks: bf16 on a CPU with bf16 "
             f"instructions when batching, else float32 (column precision); TFLite = `--tflite {args.tflite}`; batching off = "
             f"`{' '.join(batching_flags(args, 'off'))}`, dynamic = `{' '.join(batching_flags(args, 'dynamic'))}`.",
             f"- Load: {wrk_version} on loopback, `POST /v1/models/NAME:predict`, one SST-2 dev sentence per "
             f"request ({sentences} sentences, cycled), keep-alive; per row a {args.warmup:g} s warm-up, then "
             f"{args.duration:g} s measured; wrk `--timeout {WRK_TIMEOUT_S}s`. req/s: 2xx answers per second; "
             "latency: wrk's, request written to response read (client side); mean batch: texts per batch "
             "(one call of the Predictor) over the measured run (`tfllm_serve_batch_size` sum / count deltas from `/metrics`).",
             "", common.markdown_table(
                 ["backend", "precision", "batching", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms",
                  "mean batch", "errors"],
                 [[r.backend, r.precision, r.batching, r.concurrency, fmt(r.wrk.rps), fmt(r.wrk.ms(50)), fmt(r.wrk.ms(95)),
                   fmt(r.wrk.ms(99)), fmt(r.mean_batch, 2), r.errors_text()] for r in rows]), ""]
    if "tflite" in args.backends:
        lines += ["Note: tfllm's TFLite backend runs each text at batch 1 at its own length (no padding; "
                  "`TFLiteBackend.outputs` in tfllm/export/tflite.py), so a dynamic batch of N texts is N "
                  "interpreter invokes in one call of the batching thread: batching there saves per-request "
                  "overhead only, not forward passes.", ""]
    model_best = {}
    if model_rows:
        lines += [f"The model alone, no HTTP (`benchmarks/batch_gain.py`, {args.model_seconds:g} s a row, the same "
                  "sentences in file order, nothing else running): `Predictor.predict` at batch 1 against "
                  f"consecutive chunks of {args.max_batch_size}, as one pass or sorted into groups.", "",
                  common.markdown_table(["backend", "precision", "policy", "sentences/s", "x batch 1"],
                                        [[m["backend"], m["precision"], m["policy"], fmt(m["sentences_per_s"]),
                                          fmt(m["ratio"], 2)] for m in model_rows]), ""]
        for m in model_rows:
            model_best[m["backend"]] = max(model_best.get(m["backend"], 0.0), m["ratio"])
    find = {(r.backend, r.batching, r.concurrency): r for r in rows}
    values: dict = {}
    targets: list[tuple[str, Optional[bool], str]] = []
    two_cores = "" if info["cores"] == 2 else f" (the target is stated for 2 cores; this machine has {info['cores']})"
    for backend in args.backends:
        off, dyn = find.get((backend, "off", 32)), find.get((backend, "dynamic", 32))
        peak = max((r.wrk.rps for r in rows if r.backend == backend and r.batching == "dynamic"), default=None)
        values[f"{backend}_dyn_peak_rps"] = peak
        if off and dyn:
            ratio = dyn.wrk.rps / off.wrk.rps if off.wrk.rps else float("inf")
            lines.append(f"- Dynamic batching vs off at c=32, {backend}: **{ratio:.2f}x** ({dyn.wrk.rps:.1f} vs "
                         f"{off.wrk.rps:.1f} req/s; mean batch {dyn.mean_batch:.1f} vs {off.mean_batch:.1f})")
            values[f"{backend}_c32_speedup"] = ratio
            alone = f" (the model alone: {model_best[backend]:.2f}x)" if backend in model_best else ""
            values[f"{backend}_model_gain"] = model_best.get(backend)
            targets.append((f"dynamic batching >= 3x batching off at c=32, {backend}{two_cores}", ratio >= 3,
                            f"{ratio:.2f}x{alone}"))
        else:
            values[f"{backend}_c32_speedup"] = None
            targets.append((f"dynamic batching >= 3x batching off at c=32, {backend}", None,
                            "c=32 not measured (--concurrency)"))
    if soak_result is not None:
        s, w = soak_result, soak_result.wrk
        rss = [m for _, m in s.rss]
        slope = s.slope_mb_per_min()
        c1 = find.get((s.backend, "dynamic", 1))
        c1_p50 = c1.wrk.ms(50) if c1 else None
        paced = int(w.values["paced_sends"])
        late = int(w.values["late_sends"])
        lines += ["", f"Soak: {s.backend} (chosen by --soak-backend {args.soak_backend}), dynamic batching, target "
                  f"{s.rate:.1f} req/s = {args.soak_fraction:.0%} of its peak {s.peak:.1f} req/s, paced by wrk's Lua "
                  f"`delay()` over {s.connections} connections, {s.seconds:g} s:",
                  f"- achieved {w.rps:.1f} req/s (2xx); {w.completed} responses: {w.ok} 2xx, {w.non_2xx} non-2xx "
                  f"({w.server_errors} 5xx); socket errors: {w.socket_errors or 0}; late sends (> {LATE_MS} ms "
                  f"behind schedule): {late} of {paced} ({100 * late / max(paced, 1):.1f}%); mean batch "
                  f"{fmt(s.mean_batch, 2)}",
                  f"- latency p50 {w.ms(50):.1f} ms, p95 {w.ms(95):.1f} ms, p99 {w.ms(99):.1f} ms, max "
                  f"{float(w.values['max_us']) / 1000:.1f} ms; p50 at c=1 ({s.backend}, dynamic): "
                  f"{fmt(c1_p50)} ms" + (f"; p99 / c=1 p50 = {w.ms(99) / c1_p50:.2f}" if c1_p50 else ""),
                  f"- server RSS (VmRSS, every {args.rss_interval:g} s, {len(rss)} samples): start "
                  f"{fmt(rss[0] if rss else None)} MB, end {fmt(rss[-1] if rss else None)} MB, max "
                  f"{fmt(max(rss) if rss else None)} MB; slope over the second half {fmt(slope, 2)} MB/min"]
        ratio = w.ms(99) / c1_p50 if c1_p50 else None
        targets.append(("soak p99 < 5x the p50 at c=1", None if ratio is None else ratio < 5,
                        "c=1 not measured" if ratio is None else f"{w.ms(99):.1f} ms vs 5 x {c1_p50:.1f} ms "
                        f"= {5 * c1_p50:.1f} ms ({ratio:.2f}x)"))
        targets.append(("zero 5xx in the soak", w.server_errors == 0, f"{w.server_errors} 5xx"))
        errors = w.non_2xx + sum(w.socket_errors.values())
        targets.append(("soak: no errors (non-2xx, socket errors, timeouts)", errors == 0, w.errors_text()))
        targets.append((f"soak: resident memory flat (second-half slope < {args.rss_slope_limit:g} MB/min)",
                        None if not math.isfinite(slope) else abs(slope) < args.rss_slope_limit,
                        f"{fmt(slope, 2)} MB/min"))
        values.update(soak_backend=s.backend, soak_rps=w.rps, soak_target_rps=s.rate, soak_p50_ms=w.ms(50),
                      soak_p99_ms=w.ms(99), c1_p50_ms=c1_p50, soak_5xx=w.server_errors, soak_non2xx=w.non_2xx,
                      soak_socket_errors=sum(w.socket_errors.values()), soak_late_pct=100 * late / max(paced, 1),
                      rss_start_mb=rss[0] if rss else None, rss_end_mb=rss[-1] if rss else None,
                      rss_max_mb=max(rss) if rss else None, rss_slope_mb_min=slope)
    lines += ["", "Targets:"]
    for name, met, detail in targets:
        mark = "met" if met else ("NOT MET" if met is False else "not measured")
        lines.append(f"- {mark}: {name}: {detail}")
    measured = [met for _, met, _ in targets if met is not None]
    values["targets_met"] = f"{sum(measured)}/{len(measured)}"
    if args.quick:
        values["quick"] = 1
        lines += ["", "(--quick: a smoke test, short runs; not a result)"]
    lines += ["", common.result_line(**values)]
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN,
                        help="the fine-tuned SST-2 run to serve (default: runs/sst2 in the repository)")
    parser.add_argument("--tflite", type=Path, help="its int8 TFLite export (default RUN/export/model_int8.tflite)")
    parser.add_argument("--data", type=Path, default=DEV_TSV, help="TSV with a 'sentence' column (SST-2 dev)")
    parser.add_argument("--backends", default="keras,tflite", help="comma list of keras, tflite")
    parser.add_argument("--concurrency", default="1,8,32,128", help="comma list of wrk connection counts")
    parser.add_argument("--duration", type=float, default=15, help="seconds measured per row (15)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before each measurement (3)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="dynamic batching's --max-batch-size (32)")
    parser.add_argument("--max-latency-ms", type=float, default=5, help="dynamic batching's --max-latency-ms (5)")
    parser.add_argument("--forward-batch-size", type=int, default=16,
                        help="dynamic batching's --forward-batch-size (16)")
    parser.add_argument("--batch-threads", type=int, default=1,
                        help="dynamic batching's --batch-threads (1; TFLite always runs one)")
    parser.add_argument("--soak-seconds", type=float, default=600, help="soak length (600; 0: no soak)")
    parser.add_argument("--soak-fraction", type=float, default=0.7, help="soak rate, fraction of peak (0.7)")
    parser.add_argument("--soak-backend", default="keras", choices=("keras", "tflite", "fastest"),
                        help="backend of the soak (keras; fastest: the higher dynamic-batching peak)")
    parser.add_argument("--soak-connections", type=int, default=32, help="paced connections in the soak (32)")
    parser.add_argument("--rss-interval", type=float, default=10, help="seconds between RSS samples (10)")
    parser.add_argument("--rss-slope-limit", type=float, default=1.0,
                        help="'flat': second-half RSS slope under this many MB/min (1)")
    parser.add_argument("--model-seconds", type=float, default=10,
                        help="seconds per row of the model alone, benchmarks/batch_gain.py (10; 0: skip)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tfllm-serve-bench"), help="report and server logs")
    parser.add_argument("--name", default="serve", help="report name: benchmarks/results/NAME.md (serve)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 5 s rows, 2 s warm-ups, c=1,8, a 20 s soak; not written to results")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.soak_seconds, args.rss_interval = 5, 2, 20, 2
        args.model_seconds = min(args.model_seconds, 2)
        if args.concurrency == parser.get_default("concurrency"):
            args.concurrency = "1,8"
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--concurrency {args.concurrency!r}: give a comma list of integers")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency needs positive integers")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or set(args.backends) - {"keras", "tflite"}:
        parser.error(f"--backends {','.join(args.backends)}: choose from keras, tflite")
    if args.soak_seconds and args.soak_backend != "fastest" and args.soak_backend not in args.backends:
        parser.error(f"--soak-backend {args.soak_backend} is not among --backends {','.join(args.backends)}")
    if args.duration <= 0 or args.warmup <= 0 or args.soak_seconds < 0 or not 0 < args.soak_fraction <= 1:
        parser.error("--duration and --warmup must be positive, --soak-seconds >= 0, --soak-fraction in (0, 1]")
    if shutil.which("wrk") is None:
        sys.exit("error: wrk not found; install it with 'apt-get install -y wrk' (Debian/Ubuntu, as root)")
    args.run_dir = args.run_dir.resolve()
    if not (args.run_dir / "run_info.json").is_file():
        sys.exit(f"error: {args.run_dir} is not a tfllm run directory; give the fine-tuned SST-2 run with "
                 "--run-dir (e.g. one trained with configs/sst2_minilm.yaml)")
    args.tflite = (args.tflite or args.run_dir / DEFAULT_TFLITE).resolve()
    if "tflite" in args.backends and not args.tflite.is_file():
        sys.exit(f"error: {args.tflite} not found; export it (python -m tfllm.export {args.run_dir} --format "
                 "tflite --quantize int8), give --tflite FILE, or leave tflite out of --backends")
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found; give the SST-2 dev TSV with --data")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    args.out.mkdir(parents=True, exist_ok=True)
    wrk_version = (subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
                   or ["wrk"])[0].split(" Copyright")[0].strip()
    print(common.machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="tfllm-serve-bench-") as tmp:
        lua, bodies, sentences = write_inputs(Path(tmp), args.data)
        model_rows = model_gain(args)
        try:
            rows = [row for backend in args.backends for batching in ("off", "dynamic")
                    for row in measure_config(args, backend, batching, lua, bodies, args.out)]
            soak_result = None
            if args.soak_seconds > 0:
                peaks = {b: max(r.wrk.rps for r in rows if r.backend == b and r.batching == "dynamic")
                         for b in args.backends}
                backend = max(peaks, key=peaks.get) if args.soak_backend == "fastest" else args.soak_backend
                soak_result = soak(args, backend, peaks[backend], lua, bodies, args.out)
        except ServerError as error:
            sys.exit(f"error: {error}")
    text = report(args, rows, soak_result, sentences, wrk_version, model_rows)
    print(text)
    path = args.out / "serve_benchmark.md"
    path.write_text(text + "\n", encoding="utf-8")
    print("wrote", path)
    if not args.quick:
        print("wrote", common.write_report(args.name, text, "Serving benchmark: wrk against python -m tfllm.serve",
                                           started=started))


if __name__ == "__main__":
    main()
