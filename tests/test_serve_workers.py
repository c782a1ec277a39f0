"""``python -m tfllm.serve RUN --workers 2``: two processes on one port, over real HTTP on loopback,
with test_serve.py's tiny trained run.

* both workers answer (``X-Tfllm-Worker`` names the process), ``/metrics`` from either adds up
  the requests of both, the serving line is printed once;
* a worker killed with SIGKILL is replaced and the totals keep its counts; its gauges go;
* SIGTERM to the parent: the requests in flight are answered, the port closes, exit 0, and the
  temporary metrics directory is removed;
* without processes: a model that fails to load in a worker is reported to the parent, which
  raises it (one ``error:`` line, exit 2); workers that keep dying stop the parent (exit 1); a
  worker whose parent is gone stops; ``--workers 0`` is refused.
"""
import collections
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT
from test_serve import accepts, http, run_dir, samples  # noqa: F401 - run_dir: the tiny run fixture
from tfllm.errors import TfllmError
from tfllm.serve import ModelSpec, Service, Settings
from tfllm.serve.__main__ import main
from tfllm.serve.app import create_app
from tfllm.serve.server import (RESTART_WINDOW_S, RESTARTS_ALLOWED, Worker, Workers, bind, build_server,
                                worker_main)

MODEL = "sentiment"
PREDICT = (("code", "200"), ("model", MODEL), ("route", "predict"))


# --- helpers -----------------------------------------------------------------------------------
class Served:
    """``python -m tfllm.serve ARGS`` as a subprocess, with its own TMPDIR (where the parent makes
    its metrics directory) and stderr in a file."""

    def __init__(self, tmp_path: Path, *args: str, delay_ms: int = 0):
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.log = tmp_path / "stderr.txt"
        env = {**os.environ, "TMPDIR": str(self.tmp), "TFLLM_SERVE_DELAY_MS": str(delay_ms)}
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "tfllm.serve", *args], cwd=ROOT, env=env,
                                            stdout=subprocess.PIPE, stderr=stderr, text=True)

    def url(self) -> str:
        first = self.process.stdout.readline()
        assert first.startswith(f"serving {MODEL} on http://127.0.0.1:"), first + self.stderr()
        return first.split()[-1]

    def stderr(self) -> str:
        return self.log.read_text()

    def metrics_dirs(self) -> list[Path]:
        return sorted(self.tmp.glob("tfllm-serve-metrics-*"))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def ready_workers(url: str, count: int, exclude=(), seconds: float = 150) -> set[int]:
    """The ids of ``count`` worker processes (none in ``exclude``) whose /readyz answered 200."""
    ready, deadline = set(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            answer = http(url + "/readyz", timeout=5)
        except OSError:
            answer = None
        if answer is not None and answer.status == 200:
            pid = int(answer.headers["X-Tfllm-Worker"])
            if pid not in exclude:
                ready.add(pid)
            if len(ready) >= count:
                return ready
        time.sleep(0.05)
    raise AssertionError(f"{count} workers not ready after {seconds} s (ready: {ready})")


def predict(url: str, text: str):
    return http(url + f"/v1/models/{MODEL}:predict", {"instances": [text]})


def predict_until_both_answer(url: str, workers: set[int], rounds: int = 8) -> int:
    """Rounds of 8 concurrent one-text requests until every worker has answered one; the count sent."""
    answered, sent = set(), 0
    with ThreadPoolExecutor(8) as pool:
        for round_ in range(rounds):
            answers = list(pool.map(predict, [url] * 8, [f"a warm film {round_} {i}" for i in range(8)]))
            sent += len(answers)
            assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200]
            answered |= {int(a.headers["X-Tfllm-Worker"]) for a in answers}
            if answered == workers:
                return sent
    raise AssertionError(f"after {sent} requests only workers {answered} of {workers} answered")


def series(m: dict, name: str) -> dict:
    """``{labels: value}`` of one metric in :func:`samples`' answer."""
    return {labels: value for (n, labels), value in m.items() if n == name}


# --- end to end --------------------------------------------------------------------------------
def test_two_workers_share_the_port_the_metrics_and_a_graceful_stop(run_dir, tmp_path):  # noqa: F811
    """Each forward pass is held 2 s (TFLLM_SERVE_DELAY_MS), so requests are in flight at SIGTERM."""
    served = Served(tmp_path, str(run_dir), "--workers", "2", "--port", "0", delay_ms=2000)
    try:
        url = served.url()
        workers = ready_workers(url, 2)
        assert served.process.pid not in workers
        (metrics_dir,) = served.metrics_dirs()
        assert any(metrics_dir.iterdir())

        # Both workers answer; /metrics from either one counts the requests of both.
        sent = predict_until_both_answer(url, workers)
        m = samples(url)
        assert m[("tfllm_serve_requests_total", PREDICT)] == sent
        assert m[("tfllm_serve_texts_total", (("model", MODEL),))] == sent
        assert m[("tfllm_serve_batch_size_sum", (("model", MODEL),))] == sent
        assert sum(series(m, "tfllm_serve_predictions_total").values()) == sent
        assert m[("tfllm_serve_ready", ())] == 1
        capacity = series(m, "tfllm_serve_queue_capacity")
        assert {int(dict(labels)["pid"]) for labels in capacity} == workers and set(capacity.values()) == {256}
        (info,) = series(m, "tfllm_serve_model_info")
        assert {("model", MODEL), ("task", "classification"), ("labels", "neg,pos")} <= set(info)

        # A worker killed outright is replaced; the totals keep its counts, its gauges go.
        killed, kept = sorted(workers)
        os.kill(killed, signal.SIGKILL)
        (new,) = ready_workers(url, 1, exclude=workers)
        assert served.process.poll() is None
        m = samples(url)
        assert m[("tfllm_serve_requests_total", PREDICT)] == sent
        assert {int(dict(labels)["pid"]) for labels in series(m, "tfllm_serve_queue_depth")} == {kept, new}

        # SIGTERM to the parent: what is in flight is answered, the port closes, exit 0.
        answers = []
        requests = [threading.Thread(target=lambda i=i: answers.append(predict(url, f"a dull plot {i}")))
                    for i in range(4)]
        for request in requests:
            request.start()
        time.sleep(0.5)
        served.process.send_signal(signal.SIGTERM)
        while accepts(url) and any(request.is_alive() for request in requests):
            time.sleep(0.05)
        assert not accepts(url) and any(request.is_alive() for request in requests), \
            "still accepting connections after SIGTERM while requests were in flight"
        for request in requests:
            request.join(30)
        assert served.process.wait(60) == 0, served.stderr()
        assert [a.status for a in answers] == [200] * 4
    finally:
        served.kill()
    log = served.stderr()
    assert served.metrics_dirs() == [], "the metrics directory was left behind"
    assert served.process.stdout.read() == "", "the serving line was printed more than once"
    assert f"worker {killed} was killed by SIGKILL; starting another" in log
    for pid in (kept, new):
        assert f"[worker {pid}] stopped: every queued request answered" in log, log


# --- without processes -------------------------------------------------------------------------
def test_a_model_that_fails_to_load_in_a_worker_is_reported_and_raised(run_dir, tmp_path):  # noqa: F811
    """The worker (here in this process) sends its load failure to the parent and exits 2; the
    parent raises it (one ``error:`` line, exit 2, as one process does)."""
    def broken():
        raise TfllmError(f"{run_dir}/label_map.json line 2: malformed JSON")
    reader, writer = multiprocessing.Pipe(duplex=False)
    sock = bind("127.0.0.1", 0)
    with pytest.raises(SystemExit) as stop:
        worker_main([ModelSpec("broken", run_dir, "keras", run_dir, broken)], Settings(), sock, False, writer)
    assert stop.value.code == 2
    workers = Workers([], Settings(), sock, 1)
    sentinel, _ = multiprocessing.Pipe(duplex=False)  # stands for the process's: never ready
    workers.workers = [Worker(SimpleNamespace(pid=1234, exitcode=2, sentinel=sentinel), reader)]
    with pytest.raises(TfllmError) as error:
        workers.watch(timeout=5)
    assert str(error.value) == f"model broken: {run_dir}/label_map.json line 2: malformed JSON"
    assert error.value.exit_code == 2


def dead_worker(pid: int) -> Worker:
    reader, _ = multiprocessing.Pipe(duplex=False)
    return Worker(SimpleNamespace(pid=pid, exitcode=-signal.SIGKILL), reader)


def test_workers_that_keep_dying_stop_the_parent(tmp_path, monkeypatch):
    """Dead workers are replaced, up to RESTARTS_ALLOWED deaths within RESTART_WINDOW_S; one more
    is a crash loop (exit 1). Deaths older than the window are forgotten."""
    workers = Workers([], Settings(), None, 1)
    workers.metrics_dir = str(tmp_path)
    started = iter(range(1000, 2000))
    monkeypatch.setattr(workers, "start_worker", lambda: dead_worker(next(started)))
    workers.workers = [dead_worker(999)]
    workers.deaths = collections.deque([time.monotonic() - RESTART_WINDOW_S - 1] * 10)
    for _ in range(RESTARTS_ALLOWED):
        workers.replace(workers.workers[0])
    assert [w.pid for w in workers.workers] == [1000 + RESTARTS_ALLOWED - 1]
    with pytest.raises(TfllmError, match=f"{RESTARTS_ALLOWED + 1} workers died within .* giving up") as error:
        workers.replace(workers.workers[0])
    assert error.value.exit_code == 1


@pytest.mark.parametrize("parent, stops", [("mine", False), ("gone", True), (None, False)])
def test_a_worker_stops_when_its_parent_is_gone(parent, stops):
    import asyncio

    parent_pid = {"mine": os.getppid(), "gone": -1, None: None}[parent]
    server = build_server(create_app(Service([], Settings())), Settings(), parent_pid=parent_pid)
    assert asyncio.run(server.on_tick(0)) is stops and server.should_exit is stops


@pytest.mark.parametrize("count", ["0", "-2"])
def test_workers_must_be_at_least_one(run_dir, capsys, count):  # noqa: F811
    with pytest.raises(SystemExit) as stop:
        main([str(run_dir), "--workers", count])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err == f"error: --workers must be at least 1, got {count}"
