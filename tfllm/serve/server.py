"""Running the app: a listening socket and uvicorn, with SIGTERM / SIGINT as a graceful stop, in
one process or in ``--workers N`` processes sharing the socket.

On a signal uvicorn stops accepting connections, waits for the requests in flight (their batches
run to the end), then the app's lifespan answers whatever is still queued. Stock uvicorn then
re-raises the signal so the process dies of it; :class:`GracefulServer` does not, so a stop
asked for is a clean exit (status 0). Every response names the process that answered in an
``X-Tfllm-Worker: PID`` header.

    >>> sock = bind("127.0.0.1", 0)                  # port 0: the OS picks a free one
    >>> server = build_server(create_app(service), settings)
    >>> server.run(sockets=[sock])                   # or in a thread (tests): no signal handlers
    >>> serve(specs, settings, sock)                 # the same, Service and app included
    >>> Workers(specs, settings, sock, 4).run()      # 4 worker processes on the one socket

**Workers.** The parent binds the socket (so ``--port 0`` is one port, and a port in use one
error before anything starts) and starts N *spawned* processes that inherit it; each imports
TensorFlow, loads the models and runs its own uvicorn on the shared socket, the kernel handing
each new connection to whichever worker accepts it first. Spawned, not forked: the parent has
imported TensorFlow, whose threads do not survive a fork. One shared socket rather than one
``SO_REUSEPORT`` socket per worker: connections waiting in a shared backlog are taken by the
workers that are alive, whereas a worker's own ``SO_REUSEPORT`` queue is reset when that
worker dies, and a stopped worker would keep receiving its hash share of new connections until
it closed. The parent serves nothing: it watches the workers and relays signals.

* SIGTERM / SIGINT to the parent: it closes its copy of the socket, sends SIGTERM to every worker
  (each stops gracefully, as one process does), waits for them and exits 0. A worker still running
  ``--timeout-ms`` + :data:`STOP_GRACE_S` later is killed and the parent exits 1.
* A worker that dies (killed, out of memory, a crash in native code) is replaced by a new one,
  which loads the models again (its ``/readyz`` is 503 meanwhile). More than
  :data:`RESTARTS_ALLOWED` deaths within :data:`RESTART_WINDOW_S` seconds is a crash loop: the
  parent stops the others and exits 1.
* A worker whose models fail to load reports the error to the parent, which stops the others and
  prints it as one ``error:`` line (exit 2), as one process does: every worker would fail alike.
* A worker whose parent is gone (killed with SIGKILL) stops by itself, gracefully.
* Metrics: the parent runs the workers inside :func:`~tfllm.serve.metrics.shared_metrics_dir`
  (prometheus-client's multiprocess mode), so ``/metrics`` from any worker covers them all.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Iterator, Optional, Sequence

import uvicorn

from tfllm.cli import setup_logging
from tfllm.errors import TfllmError
from tfllm.serve.app import create_app
from tfllm.serve.config import ModelSpec, Settings
from tfllm.serve.metrics import forget_process, shared_metrics_dir
from tfllm.serve.service import Service

log = logging.getLogger("tfllm.serve")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 5.0  # beyond --timeout-ms, for the last responses to go out
STOP_GRACE_S = 15.0  # beyond --timeout-ms, for a worker to answer its queue and exit
RESTARTS_ALLOWED = 3  # worker deaths tolerated within RESTART_WINDOW_S
RESTART_WINDOW_S = 60.0
POLL_S = 0.2  # how often the parent looks at its workers and at a stop signal
WORKER_HEADER = "X-Tfllm-Worker"


class GracefulServer(uvicorn.Server):
    """uvicorn's server; a SIGTERM or SIGINT shuts down gracefully and ``run`` returns normally.
    With ``parent_pid`` set (a worker), it also shuts down once that parent process is gone."""

    parent_pid: Optional[int] = None

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; a threaded server stops on should_exit
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def on_tick(self, counter: int) -> bool:
        if self.parent_pid is not None and counter % 10 == 0 and os.getppid() != self.parent_pid:
            if not self.should_exit:
                log.warning("parent process %d is gone; stopping", self.parent_pid)
            self.should_exit = True
        return await super().on_tick(counter)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 if the host has a colon)."""
    if not 0 <= port <= 65535:
        raise TfllmError(f"--port must be 0-65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and the
    # accepted connections inherit this one's. Without it Nagle holds the response body (written
    # after its headers) for the client's delayed ACK: ~40 ms more per request on a keep-alive
    # connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
        raise TfllmError(f"--host {host} --port {port} {reason}") from None
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def build_server(app, settings: Settings, access_log: bool = False,
                 parent_pid: Optional[int] = None) -> GracefulServer:
    """A uvicorn server for ``app`` logging through tfllm's logging set-up; in-flight requests
    get ``--timeout-ms`` plus a few seconds to finish on shutdown. Its responses carry this
    process's id (``X-Tfllm-Worker``)."""
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=access_log, loop="asyncio",
                            timeout_graceful_shutdown=settings.timeout_ms / 1000 + GRACE_S,
                            headers=[(WORKER_HEADER, str(os.getpid()))])
    server = GracefulServer(config)
    server.parent_pid = parent_pid
    return server


def serve(specs: Sequence[ModelSpec], settings: Settings, sock: socket.socket, access_log: bool = False,
          parent_pid: Optional[int] = None) -> None:
    """Serve ``specs`` on ``sock`` in this process until SIGTERM / SIGINT (or, in a worker, the
    parent's death); a model that fails to load stops the server and is raised."""
    service = Service(specs, settings)
    server = build_server(create_app(service), settings, access_log, parent_pid)
    service.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run(sockets=[sock])
    if service.failure is not None:
        raise service.failure


# --- several worker processes ------------------------------------------------------------------
def worker_main(specs: Sequence[ModelSpec], settings: Settings, sock: socket.socket, access_log: bool,
                report: Connection) -> None:
    """One worker process (spawned by :class:`Workers`): serve until told to stop. A failure is
    sent to the parent as ``(exit_code, message)`` and the worker exits with that code."""
    setup_logging()
    for handler in logging.getLogger().handlers:  # N processes write to one stderr: tag the lines
        handler.setFormatter(logging.Formatter("%(asctime)s [worker %(process)d] %(message)s", "%H:%M:%S"))
    try:
        serve(specs, settings, sock, access_log, parent_pid=os.getppid())
    except TfllmError as error:
        report.send((error.exit_code, str(error)))
        sys.exit(error.exit_code)
    except Exception as error:  # noqa: BLE001 - a bug: its traceback here, one line from the parent
        log.exception("worker failed")
        report.send((1, f"{type(error).__name__}: {error}"))
        sys.exit(1)


@dataclass(eq=False)
class Worker:
    """A worker process and the read end of its report pipe."""
    process: multiprocessing.process.BaseProcess
    report: Connection

    @property
    def pid(self) -> int:
        return self.process.pid


class Workers:
    """``count`` worker processes serving ``sock``, kept running until SIGTERM / SIGINT (see the
    module docstring for what happens when one dies or fails)."""

    def __init__(self, specs: Sequence[ModelSpec], settings: Settings, sock: socket.socket, count: int,
                 access_log: bool = False):
        self.specs, self.settings, self.sock, self.count = list(specs), settings, sock, count
        self.access_log = access_log
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[Worker] = []
        self.deaths: collections.deque[float] = collections.deque()
        self.stop_signal: Optional[int] = None
        self.metrics_dir = ""

    @property
    def stop_timeout_s(self) -> float:
        return self.settings.timeout_ms / 1000 + STOP_GRACE_S

    def run(self) -> None:
        """Start the workers and keep them running until a stop signal, then stop them; raises
        :class:`TfllmError` when a worker's models fail to load or workers keep dying."""
        with shared_metrics_dir() as self.metrics_dir, self.stop_signals():
            try:
                self.workers = [self.start_worker() for _ in range(self.count)]
                while self.stop_signal is None:
                    self.watch(POLL_S)
            finally:
                killed = self.stop_all()
        if killed:
            raise worker_error(f"worker {', '.join(map(str, killed))} did not stop within "
                               f"{self.stop_timeout_s:g} s (--timeout-ms + {STOP_GRACE_S:g}) and was killed", 1)
        log.info("stopped: %d workers", self.count)

    @contextlib.contextmanager
    def stop_signals(self) -> Iterator[None]:
        """SIGTERM / SIGINT set :attr:`stop_signal` (the loop in :meth:`run` sees it)."""
        def handle(sig, frame):
            if self.stop_signal is None:
                log.info("%s: stopping %d workers", signal.Signals(sig).name, len(self.workers))
                self.stop_signal = sig
        previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start_worker(self) -> Worker:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(target=worker_main, name="tfllm-serve-worker",
                                       args=(self.specs, self.settings, self.sock, self.access_log, writer))
        with sigint_ignored():
            process.start()
        writer.close()  # the worker holds the other copy: its death reads as end of file
        log.info("started worker %d", process.pid)
        return Worker(process, reader)

    def watch(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a worker to report or die: a reported failure is raised,
        a dead worker replaced."""
        wait([w.process.sentinel for w in self.workers] + [w.report for w in self.workers], timeout)
        for worker in list(self.workers):
            failure = read_report(worker)
            if failure is not None:
                raise failure
            if worker.process.exitcode is not None and self.stop_signal is None:
                self.replace(worker)

    def replace(self, worker: Worker) -> None:
        """A new worker for one that died, unless workers keep dying (a crash loop: raised)."""
        forget_process(worker.pid, self.metrics_dir)
        worker.report.close()
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths[0] < now - RESTART_WINDOW_S:
            self.deaths.popleft()
        how = exit_description(worker.process.exitcode)
        if len(self.deaths) > RESTARTS_ALLOWED:
            raise worker_error(f"worker {worker.pid} {how}: {len(self.deaths)} workers died within "
                               f"{RESTART_WINDOW_S:g} s; giving up", 1)
        log.error("worker %d %s; starting another", worker.pid, how)
        self.workers[self.workers.index(worker)] = self.start_worker()

    def stop_all(self) -> list[int]:
        """Close the parent's copy of the socket, SIGTERM every worker and wait for each to answer
        what it holds and exit; kill those still running after :attr:`stop_timeout_s`. Returns
        the ids of the killed workers."""
        self.sock.close()  # once the workers close theirs, the port refuses connections
        running = [w for w in self.workers if w.process.exitcode is None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for worker in running:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        killed = [w.pid for w in running if w.process.exitcode is None]
        for worker in running:
            if worker.process.exitcode is None:
                log.error("worker %d did not stop in time; killing it", worker.pid)
                worker.process.kill()
                worker.process.join()
        for worker in self.workers:
            worker.report.close()
        return killed


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile. A process started meanwhile inherits that (across exec), and
    Python keeps it while importing: a Ctrl+C, which the terminal sends to the workers too, does
    not break a worker's start-up with a KeyboardInterrupt; the parent's SIGTERM stops it. Once
    serving, uvicorn's handler takes SIGINT as a graceful stop."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def read_report(worker: Worker) -> Optional[TfllmError]:
    """The failure a worker reported, as a :class:`TfllmError` with its exit code, if any."""
    try:
        if not worker.report.poll():
            return None
        exit_code, message = worker.report.recv()
    except (EOFError, OSError):  # it died without a word, or its pipe is closed already
        return None
    return worker_error(message, exit_code)


def worker_error(message: str, exit_code: int) -> TfllmError:
    error = TfllmError(message)
    error.exit_code = exit_code
    return error


def exit_description(exitcode: int) -> str:
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"
