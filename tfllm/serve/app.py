"""The service's routes, as a Starlette app around a :class:`~tfllm.serve.service.Service`.

=======================================  ====================================================
``GET  /``                               a web page to try the models (tfllm/resources/serve)
``GET  /healthz``                        alive
``GET  /readyz``                         200 once every model is loaded and warmed up, else 503
``GET  /metrics``                        Prometheus text format
``GET  /openapi.json``                   the routes (OpenAPI 3.1)
``GET  /v1/models``                      the models and their states
``GET  /v1/models/NAME``                 TF Serving's model status
``GET  /v1/models/NAME/metadata``        TF Serving's metadata (signature), plus task and labels
``POST /v1/models/NAME:predict``         TF Serving's Predict: ``{"predictions": [...]}``
``POST /v1/models/NAME:classify``        the task's rows: ``{"results": [{"label", "probabilities"}]}``
=======================================  ====================================================

Model routes also answer as ``/v1/models/NAME/versions/1...`` (one version, "1"). Every error is
JSON ``{"error": "..."}`` with a 4xx/5xx code, counted in ``tfllm_serve_requests_total`` and
``tfllm_serve_rejected_requests_total``.

    >>> app = create_app(Service(specs, Settings()))
    >>> uvicorn.run(app)     # tfllm.serve.server does this with graceful shutdown
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tfllm.serve import batcher as batching
from tfllm.serve.openapi import openapi
from tfllm.serve.requests import (Refused, body_too_large, check_content_length, check_words, parse_instances,
                                  parse_json)
from tfllm.serve.service import AVAILABLE, FAILED, LOADING, ServedModel, Service

log = logging.getLogger(__name__)
MODEL_PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                        r"(?:(?P<metadata>/metadata)|:(?P<verb>[^/:]*))?")
VERSION = "1"
VERBS = ("predict", "classify")
UNKNOWN = "unknown"  # the metrics' model label for names that are not served (bounded cardinality)
TF_STATES = {LOADING: "LOADING", AVAILABLE: "AVAILABLE", FAILED: "END"}
PAGE = "resources/serve/index.html"  # in the tfllm package
PAGE_HEADERS = {  # the page is self-contained: inline CSS and JS, and fetches this server's API only
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff"}


@dataclass
class Call:
    """What one request is, for the metrics: its model (once known) and route."""
    route: str
    model: str = ""


def create_app(service: Service) -> Starlette:
    """The Starlette app; its lifespan starts the service (background loading) and stops it."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        yield
        await service.stop()

    app = Starlette(routes=[
        Route("/", endpoint("page", page)),
        Route("/healthz", endpoint("healthz", healthz)),
        Route("/readyz", endpoint("readyz", readyz)),
        Route("/metrics", endpoint("metrics", metrics)),
        Route("/openapi.json", endpoint("openapi", openapi_document)),
        Route("/v1/models", endpoint("models", list_models)),
        Route("/v1/models/{rest:path}", endpoint("model", model_route), methods=["GET", "POST"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: unmatched})
    app.state.service = service
    return app


def endpoint(route: str, handler):
    """A Starlette endpoint around ``handler(service, request, call)``: errors become JSON, every
    answer is counted by model, route and code, model routes timed."""
    async def wrapped(request: Request) -> Response:
        service: Service = request.app.state.service
        call, start = Call(route), time.perf_counter()
        try:
            response = await handler(service, request, call)
        except Refused as e:
            service.metrics.rejected.labels(call.model, e.reason).inc()
            response = error(e.message, e.status, e.headers)
        except Exception as e:  # noqa: BLE001 - a bug or a model failure: 500, the server keeps serving
            log.exception("%s %s failed", request.method, request.url.path)
            response = error(f"internal error: {type(e).__name__}: {e}", 500)
        service.metrics.requests.labels(call.model, call.route, str(response.status_code)).inc()
        if call.model and call.model != UNKNOWN:
            service.metrics.request_seconds.labels(call.model, call.route).observe(time.perf_counter() - start)
        return response
    return wrapped


def error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


async def unmatched(request: Request, exc: HTTPException) -> Response:
    """No such route (404) or method (405): JSON too, and counted."""
    service: Service = request.app.state.service
    service.metrics.requests.labels("", "unmatched", str(exc.status_code)).inc()
    message = {404: f"no route {request.url.path}; see /openapi.json",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return error(message, exc.status_code, getattr(exc, "headers", None))


# --- plain routes ------------------------------------------------------------------------------
async def page(service: Service, request: Request, call: Call) -> Response:
    """The web page to try the models: it lists them, sends texts to :classify and draws the rows."""
    return HTMLResponse(page_html(), headers=PAGE_HEADERS)


@functools.cache
def page_html() -> str:
    return resources.files("tfllm").joinpath(PAGE).read_text(encoding="utf-8")


async def healthz(service: Service, request: Request, call: Call) -> Response:
    return JSONResponse({"status": "alive"})


async def readyz(service: Service, request: Request, call: Call) -> Response:
    status = "ready" if service.ready else "stopping" if service.stopping else \
        "failed" if service.failure is not None else "loading"
    return JSONResponse({"status": status, "models": service.status()}, 200 if service.ready else 503)


async def metrics(service: Service, request: Request, call: Call) -> Response:
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


async def openapi_document(service: Service, request: Request, call: Call) -> Response:
    return JSONResponse(openapi(list(service.models)))


async def list_models(service: Service, request: Request, call: Call) -> Response:
    return JSONResponse({"models": [{"name": name, "state": model.state,
                                     "task": model.predictor.task.name if model.predictor else None}
                                    for name, model in service.models.items()]})


# --- /v1/models/... ----------------------------------------------------------------------------
async def model_route(service: Service, request: Request, call: Call) -> Response:
    """``NAME[/versions/1]`` (status), ``.../metadata``, ``...:predict`` / ``...:classify``."""
    match = MODEL_PATH.fullmatch(request.path_params["rest"])
    if match is None:
        raise Refused(f"no route {request.url.path}; see /openapi.json", "unknown_route", 404)
    verb = match["verb"]
    call.route = verb if verb in VERBS else "metadata" if match["metadata"] else "status"
    model = find_model(service, match["name"], call)
    if match["version"] not in (None, VERSION):
        raise Refused(f"model {model.name} has no version {match['version']!r}; it serves version {VERSION}",
                      "unknown_version", 404)
    if verb is not None and verb not in VERBS:
        raise Refused(f"unknown method :{verb}; use :predict or :classify", "unknown_method", 404)
    wanted = "POST" if verb is not None else "GET"
    if request.method != wanted:
        raise Refused(f"{request.method} is not allowed on {request.url.path}; use {wanted}",
                      "wrong_method", 405, {"Allow": wanted})
    if verb is None:
        return JSONResponse(metadata(model) if match["metadata"] else model_status(model))
    return await predict(service, model, request, verb)


def find_model(service: Service, name: str, call: Call) -> ServedModel:
    if name not in service.models:
        call.model = UNKNOWN
        raise Refused(f"no model named {name!r}; serving: {', '.join(service.models)}", "unknown_model", 404)
    call.model = name
    return service.models[name]


def model_status(model: ServedModel) -> dict:
    """TF Serving's GetModelStatus answer."""
    failed = model.state == FAILED
    return {"model_version_status": [{
        "version": VERSION, "state": TF_STATES.get(model.state, "UNLOADING"),
        "status": {"error_code": "UNKNOWN" if failed else "OK", "error_message": model.error}}]}


def metadata(model: ServedModel) -> dict:
    """TF Serving's GetModelMetadata answer (the serving_default signature), plus tfllm's view."""
    spec = {"name": model.name, "signature_name": "", "version": VERSION}
    predictor = model.predictor
    if predictor is None:
        return {"model_spec": spec, "metadata": {}, "tfllm": {"state": model.state}}
    inputs = {"text": tensor("text", "DT_STRING", [-1])}
    if predictor.pair_task:
        inputs["text_pair"] = tensor("text_pair", "DT_STRING", [-1])
    signature = {"inputs": inputs, "outputs": outputs(predictor), "method_name": "tensorflow/serving/predict"}
    return {"model_spec": spec,
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            "tfllm": {"task": predictor.task.name, "labels": predictor.label_names, "pair_task": predictor.pair_task,
                      "max_length": predictor.task.cfg.data.max_length, "backend": model.spec.backend,
                      "source": str(model.spec.path), "state": model.state}}


def tensor(name: str, dtype: str, shape: list[int]) -> dict:
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(n), "name": ""} for n in shape],
                                             "unknown_rank": False}, "name": name}


def outputs(predictor) -> dict:
    """The Predict answer's per-text value, described as TF Serving would."""
    task = predictor.task.name
    if task in ("classification", "multi_label"):
        return {"probabilities": tensor("probabilities", "DT_FLOAT", [-1, len(predictor.label_names)])}
    if task == "regression":
        return {"score": tensor("score", "DT_FLOAT", [-1])}
    return {"entities": tensor("entities", "DT_STRING", [-1, -1])}


async def predict(service: Service, model: ServedModel, request: Request, verb: str) -> Response:
    """:predict / :classify: read and check the body, queue it, answer in the request's format."""
    if model.state != AVAILABLE or model.batcher is None:
        state = "stopping" if service.stopping else model.state.lower()
        raise Refused(f"model {model.name} is {state}; retry when /readyz is 200", "not_ready", 503,
                      {"Retry-After": "5"})
    settings = service.settings
    body = await read_body(request, settings.max_body_bytes)
    instances = parse_instances(parse_json(body), model.predictor.pair_task, settings)
    if model.predictor.task.name == "token_classification":
        check_words(instances, model.predictor.tokenizer)
    rows = await queued(model, instances.texts, instances.pairs, settings.timeout_ms)
    if verb == "classify":
        return JSONResponse({"results": rows})
    values = [prediction(row, model.predictor) for row in rows]
    return JSONResponse({"outputs": values} if instances.columnar else {"predictions": values})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes whether or not it declared its length."""
    check_content_length(request.headers.get("content-length"), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def queued(model: ServedModel, texts: list, pairs, timeout_ms: float) -> list[dict]:
    """The rows from the model's batcher; a full queue, a timeout or shutdown as an HTTP error."""
    try:
        return await model.batcher.submit(texts, pairs)
    except batching.QueueFull:
        raise Refused(f"model {model.name}: queue full ({model.batcher.max_queue} requests waiting, "
                      "--max-queue); retry later", "queue_full", 503, {"Retry-After": "1"}) from None
    except batching.Timeout:
        raise Refused(f"model {model.name}: no answer within {timeout_ms:g} ms (--timeout-ms)",
                      "timeout", 504) from None
    except batching.Stopped:
        raise Refused("the server is shutting down", "stopping", 503, {"Retry-After": "1"}) from None


def prediction(row: dict, predictor) -> object:
    """TF Serving's per-text value of a row: probabilities in label order, the score or the entities."""
    if "probabilities" in row:
        return [row["probabilities"][label] for label in predictor.label_names]
    if "score" in row:
        return row["score"]
    if "entities" in row:
        return row["entities"]
    return {key: value for key, value in row.items() if key not in ("text", "text_pair")}
