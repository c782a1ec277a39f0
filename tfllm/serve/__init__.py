"""An HTTP inference service for finished tfllm runs: TF Serving's REST API, dynamic batching,
health probes and Prometheus metrics.

    python -m tfllm.serve runs/sst2                                   # Keras, http://127.0.0.1:8501
    python -m tfllm.serve runs/sst2 --backend tflite --port 0         # LiteRT; a free port, printed
    python -m tfllm.serve --model sst2=runs/sst2 --model ner=runs/conll/export/model.tflite

    curl -s localhost:8501/v1/models/sst2:predict -d '{"instances": ["a warm, funny film"]}'
    {"predictions": [[0.0213, 0.9787]]}

Modules: :mod:`~tfllm.serve.config` (the models to serve and the limits), :mod:`~tfllm.serve.requests`
(reading and checking a request body), :mod:`~tfllm.serve.batcher` (the per-model queue and dynamic
batching), :mod:`~tfllm.serve.service` (loading, warm-up, readiness, shutdown),
:mod:`~tfllm.serve.app` (the routes), :mod:`~tfllm.serve.metrics`, :mod:`~tfllm.serve.openapi`,
:mod:`~tfllm.serve.server` (uvicorn, signals) and ``__main__`` (the command line).

Why Starlette + uvicorn + prometheus-client:

* **Starlette** is the small ASGI toolkit under FastAPI: routing, requests, JSON responses and a
  lifespan hook, nothing else. The request bodies here are checked by hand anyway (every bad
  input must name its problem in one line), so FastAPI's pydantic models would add a dependency
  and a second, differently-worded error format for no gain; aiohttp would work too but brings
  its own server and event-loop conventions.
* **uvicorn** is the standard ASGI server: asyncio event loop (the batcher is an asyncio task
  beside the request handlers), graceful shutdown that stops accepting and waits for in-flight
  requests, and a ``Server`` object that runs in a thread for the tests.
* **prometheus-client** is the reference Python client: counters, gauges, histograms and Info in
  a registry of our own (several servers can live in one process) rendered in the text format.
* TensorFlow Serving itself was not an option: it serves a SavedModel's graph only, and tfllm's
  tasks do their work in Python around the model (NER windows and CRF decoding, multi-label
  thresholds, LiteRT models), which the :class:`~tfllm.inference.Predictor` already does for
  every backend. The routes copy TF Serving's REST API so its clients work unchanged.
"""
from tfllm.serve.config import ModelSpec, Settings
from tfllm.serve.service import Service

__all__ = ["ModelSpec", "Service", "Settings"]
