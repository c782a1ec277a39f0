"""The service's Prometheus metrics, in a registry of its own (``GET /metrics`` renders it).

=============================================  ==========================================================
``tfllm_serve_requests_total``                 HTTP requests by ``model``, ``route``, ``code``
``tfllm_serve_rejected_requests_total``        refused requests by ``model`` and ``reason`` (bad input, queue full...)
``tfllm_serve_request_seconds``                end-to-end latency of model routes, by ``model``, ``route``
``tfllm_serve_queue_wait_seconds``             time a request waited in its model's queue
``tfllm_serve_inference_seconds``              one batch's forward pass (the Predictor, in a worker thread)
``tfllm_serve_batch_size``                     texts per forward pass
``tfllm_serve_queue_depth``                    requests waiting, per model (``..._queue_capacity``: --max-queue)
``tfllm_serve_texts_total``                    texts predicted
``tfllm_serve_truncated_texts_total``          texts over the model's max_length tokens (cut; windowed for NER)
``tfllm_serve_predictions_total``              predicted labels (classification, multi-label): the drift signal
``tfllm_serve_reference_label_share``          each label's share of the predictions on the run's dev set
``tfllm_serve_model_load_seconds``             loading plus warm-up
``tfllm_serve_model_info``                     task, backend, source, labels, max_length of each model
``tfllm_serve_ready``                          1 once every model is loaded and warmed up
=============================================  ==========================================================
"""
from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info,
                               disable_created_metrics, generate_latest)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFIX = "tfllm_serve_"
disable_created_metrics()  # no *_created series: half the exposition, never used by the alerts


class ServeMetrics:
    """Every metric of one service (see the module docstring for the names)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry = registry if registry is not None else CollectorRegistry()

        def counter(name, doc, labels):
            return Counter(PREFIX + name, doc, labels, registry=registry)

        def gauge(name, doc, labels=()):
            return Gauge(PREFIX + name, doc, labels, registry=registry)

        def histogram(name, doc, labels, buckets=LATENCY_BUCKETS):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=registry)

        self.requests = counter("requests", "HTTP requests by model, route and status code", ["model", "route", "code"])
        self.rejected = counter("rejected_requests", "Requests refused, by model and reason", ["model", "reason"])
        self.request_seconds = histogram("request_seconds", "End-to-end latency of model routes", ["model", "route"])
        self.queue_wait = histogram("queue_wait_seconds", "Time a request waited in its model's queue", ["model"])
        self.inference = histogram("inference_seconds", "One batch's forward pass", ["model"])
        self.batch_size = histogram("batch_size", "Texts per forward pass", ["model"], BATCH_BUCKETS)
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
        self.model_info = Info(PREFIX + "model", "What each served model is", ["model"], registry=registry)
        self.ready = gauge("ready", "1 once every model is loaded and warmed up")

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
