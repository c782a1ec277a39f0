"""Running the app: a listening socket and uvicorn, with SIGTERM / SIGINT as a graceful stop.

On a signal uvicorn stops accepting connections, waits for the requests in flight (their batches
run to the end), then the app's lifespan answers whatever is still queued. Stock uvicorn then
re-raises the signal so the process dies of it; :class:`GracefulServer` does not, so a stop
asked for is a clean exit (status 0).

    >>> sock = bind("127.0.0.1", 0)                  # port 0: the OS picks a free one
    >>> server = build_server(create_app(service), settings)
    >>> server.run(sockets=[sock])                   # or in a thread (tests): no signal handlers
"""
from __future__ import annotations

import contextlib
import errno
import signal
import socket
import threading

import uvicorn

from tfllm.errors import TfllmError
from tfllm.serve.config import Settings

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 5.0  # beyond --timeout-ms, for the last responses to go out


class GracefulServer(uvicorn.Server):
    """uvicorn's server; a SIGTERM or SIGINT shuts down gracefully and ``run`` returns normally."""

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


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 if the host has a colon)."""
    if not 0 <= port <= 65535:
        raise TfllmError(f"--port must be 0-65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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


def build_server(app, settings: Settings, access_log: bool = False) -> GracefulServer:
    """A uvicorn server for ``app`` logging through tfllm's logging set-up; in-flight requests
    get ``--timeout-ms`` plus a few seconds to finish on shutdown."""
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=access_log, loop="asyncio",
                            timeout_graceful_shutdown=settings.timeout_ms / 1000 + GRACE_S)
    return GracefulServer(config)
