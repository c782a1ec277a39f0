"""The service's Prometheus metrics, in a registry of its own (``GET /metrics`` renders it).

=============================================  ==========================================================
``tfllm_serve_requests_total``                 HTTP requests by ``model``, ``route``, ``code``
``tfllm_serve_rejected_requests_total``        refused requests by ``model`` and ``reason`` (bad input, queue full...)
``tfllm_serve_request_seconds``                end-to-end latency of model routes, by ``model``, ``route``
``tfllm_serve_queue_wait_seconds``             time a request waited in its model's queue
``tfllm_serve_inference_seconds``              one batch's forward passes (one Predictor call, in a worker thread)
``tfllm_serve_batch_size``                     texts per batch (one call of the Predictor)
``tfllm_serve_queue_depth``                    requests waiting, per model (``..._queue_capacity``: --max-queue)
``tfllm_serve_texts_total``                    texts predicted
``tfllm_serve_truncated_texts_total``          texts over the model's max_length tokens (cut; windowed for NER)
``tfllm_serve_predictions_total``              predicted labels (classification, multi-label): the drift signal
``tfllm_serve_reference_label_share``          each label's share of the predictions on the run's dev set
``tfllm_serve_model_load_seconds``             loading plus warm-up
``tfllm_serve_model_info``                     task, backend, source, labels, max_length of each model
``tfllm_serve_ready``                          1 once every model is loaded and warmed up
=============================================  ==========================================================

**Several worker processes** (``--workers N``): the parent runs them inside :func:`shared_metrics_dir`,
which points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory (removed on exit). Each
worker's metrics then live in memory-mapped files there, and ``/metrics`` from any worker renders
them all (prometheus-client's multiprocess mode): counters and histograms are summed over the
workers, dead ones included (totals never go back); each gauge has a ``multiprocess_mode`` saying
how the live workers' values combine (:data:`GAUGE_MODES`). Info has no multiprocess mode, so
there ``tfllm_serve_model_info`` is a gauge set to 1 with the same labels (:class:`InfoGauge`):
the same series, in the same text format (Prometheus' text format exposes an Info as a gauge).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info,
                               disable_created_metrics, generate_latest, multiprocess, values)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFIX = "tfllm_serve_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
INFO_LABELS = ("task", "backend", "source", "labels", "max_length", "pair")  # service.describe's keys
# How each gauge's values combine over live worker processes ("live": a dead worker's value is dropped).
GAUGE_MODES = {
    "queue_depth": "liveall",            # one series per worker (label pid): a queue is per worker,
    "queue_capacity": "liveall",         # so depth / capacity is each worker's fullness
    "reference_label_share": "livemax",  # the same in every worker
    "model_load_seconds": "livemax",     # the slowest worker's
    "model_info": "livemax",             # 1 in every worker
    "ready": "livemin",                  # 1 only when every worker is ready
}
disable_created_metrics()  # no *_created series: half the exposition, never used by the alerts


class ServeMetrics:
    """Every metric of one service (see the module docstring for the names)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry = registry if registry is not None else CollectorRegistry()

        def counter(name, doc, labels):
            return Counter(PREFIX + name, doc, labels, registry=registry)

        def gauge(name, doc, labels=()):
            return Gauge(PREFIX + name, doc, labels, registry=registry, multiprocess_mode=GAUGE_MODES[name])

        def histogram(name, doc, labels, buckets=LATENCY_BUCKETS):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=registry)

        self.requests = counter("requests", "HTTP requests by model, route and status code", ["model", "route", "code"])
        self.rejected = counter("rejected_requests", "Requests refused, by model and reason", ["model", "reason"])
        self.request_seconds = histogram("request_seconds", "End-to-end latency of model routes", ["model", "route"])
        self.queue_wait = histogram("queue_wait_seconds", "Time a request waited in its model's queue", ["model"])
        self.inference = histogram("inference_seconds", "One batch's forward passes", ["model"])
        self.batch_size = histogram("batch_size", "Texts per batch", ["model"], BATCH_BUCKETS)
        self.queue_depth = gauge("queue_depth", "Requests waiting in the model's queue", ["model"])
        self.queue_capacity = gauge("queue_capacity", "Requests the model's queue holds (--max-queue)", ["model"])
        self.texts = counter("texts", "Texts predicted", ["model"])
        self.truncated = counter("truncated_texts", "Texts longer than the model's max_length tokens "
                                 "(truncated; split into windows for token classification)", ["model"])
        self.predictions = counter("predictions", "Predicted labels (classification and multi-label)",
                                   ["model", "label"])
        self.reference_share = gauge("reference_label_share", "Share of each predicted label on the run's "
                                     "dev set (eval/dev/predictions.csv)", ["model", "label"])
        self.load_seconds = gauge("model_load_seconds", "Seconds to load and warm up the model", ["model"])
        if multiprocess_dir() is None:
            self.model_info = Info(PREFIX + "model", "What each served model is", ["model"], registry=registry)
        else:
            self.model_info = InfoGauge(gauge("model_info", "What each served model is", ["model", *INFO_LABELS]))
        self.ready = gauge("ready", "1 once every model is loaded and warmed up")

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type: this process's metrics, or with
        several workers every worker's, combined."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path)
        return generate_latest(combined), CONTENT_TYPE_LATEST


class InfoGauge:
    """Info's ``labels(model).info({...})`` on a gauge set to 1, for multiprocess mode (no Info)."""

    def __init__(self, gauge: Gauge):
        self.gauge = gauge

    def labels(self, model: str) -> "InfoGauge.Child":
        return InfoGauge.Child(self.gauge, model)

    class Child:
        def __init__(self, gauge: Gauge, model: str):
            self.gauge, self.model = gauge, model

        def info(self, values: dict[str, str]) -> None:
            self.gauge.labels(self.model, *(values[key] for key in INFO_LABELS)).set(1)


# --- several worker processes ------------------------------------------------------------------
def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` if this process keeps its metrics there (the variable was set
    when prometheus-client was imported), else None."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and values.ValueClass is not values.MutexValue else None


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[str]:
    """A fresh temporary ``PROMETHEUS_MULTIPROC_DIR`` for the worker processes started inside
    (they inherit the environment), removed with its files on the way out. It must be set before
    a worker imports prometheus-client, which picks its value store once, at import."""
    path = tempfile.mkdtemp(prefix="tfllm-serve-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def forget_process(pid: int, path: str) -> None:
    """Drop a dead worker's live gauges (its counters and histograms stay in the totals)."""
    multiprocess.mark_process_dead(pid, path)
