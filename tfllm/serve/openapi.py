"""The OpenAPI 3.1 description of the service's routes (``GET /openapi.json``).

    >>> sorted(openapi(["sst2"])["paths"])[:3]
    ['/', '/healthz', '/metrics']
"""
from __future__ import annotations

from typing import Sequence

TEXT = {"type": "string", "minLength": 1}
INSTANCE = {"oneOf": [TEXT, {"type": "object", "required": ["text"], "additionalProperties": False,
                             "properties": {"text": TEXT, "text_pair": TEXT}}]}
REQUEST = {"type": "object", "additionalProperties": False, "properties": {
    "instances": {"type": "array", "minItems": 1, "items": INSTANCE, "description": "row format"},
    "inputs": {"description": "columnar format", "oneOf": [
        {"type": "array", "minItems": 1, "items": INSTANCE},
        {"type": "object", "required": ["text"], "properties": {
            "text": {"type": "array", "items": TEXT}, "text_pair": {"type": "array", "items": TEXT}}}]},
    "signature_name": {"enum": ["", "serving_default"]}}}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
PREDICTION = {"description": "classification / multi_label: probabilities in label order; regression: "
                             "the score; token_classification: the entities"}
ROW = {"type": "object", "description": "the task's row: text (text_pair), and label + probabilities, "
                                        "score, labels + probabilities or entities"}


def json_body(schema: dict, description: str = "") -> dict:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def errors(*codes: int) -> dict:
    text = {400: "bad input (the message names it)", 404: "unknown model, version or method",
            405: "wrong HTTP method", 413: "body over --max-body-bytes",
            500: "the model failed", 503: "queue full or model loading / server stopping (Retry-After)",
            504: "not answered within --timeout-ms"}
    return {str(code): json_body(ERROR, text[code]) for code in codes}


def model_post(summary: str, answer: dict) -> dict:
    return {"post": {"summary": summary, "parameters": [NAME],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST}}},
                     "responses": {"200": json_body(answer), **errors(400, 404, 413, 500, 503, 504)}}}


def model_get(summary: str, answer: dict) -> dict:
    return {"get": {"summary": summary, "parameters": [NAME],
                    "responses": {"200": json_body(answer), **errors(404)}}}


STATUS = {"type": "object", "properties": {"model_version_status": {"type": "array", "items": {
    "type": "object", "properties": {"version": {"type": "string"}, "state": {"type": "string"},
                                     "status": {"type": "object"}}}}}}
PREDICT_ANSWER = {"type": "object", "properties": {
    "predictions": {"type": "array", "items": PREDICTION, "description": "for instances (rows)"},
    "outputs": {"type": "array", "items": PREDICTION, "description": "for inputs (columns), as TF Serving"}}}


def openapi(models: Sequence[str]) -> dict:
    """The document; ``models`` are listed in the description."""
    plain = {"200": {"description": "OK"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "tfllm inference service", "version": "1",
                 "description": "TensorFlow Serving's REST API for tfllm runs. Models: " + ", ".join(models)
                                + ". Every model route also answers under /v1/models/{name}/versions/1."},
        "paths": {
            "/": {"get": {"summary": "A web page to try the models (HTML)",
                          "responses": {"200": {"description": "OK", "content": {"text/html": {}}}}}},
            "/healthz": {"get": {"summary": "Liveness: the process answers", "responses": plain}},
            "/readyz": {"get": {"summary": "Readiness: every model loaded and warmed up",
                                "responses": {**plain, "503": {"description": "loading or stopping"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format)", "responses": plain}},
            "/openapi.json": {"get": {"summary": "This document", "responses": plain}},
            "/v1/models": {"get": {"summary": "The served models and their states", "responses": plain}},
            "/v1/models/{name}": model_get("Model status (TF Serving's GetModelStatus)", STATUS),
            "/v1/models/{name}/metadata": model_get("Model metadata: signature, task, labels", {"type": "object"}),
            "/v1/models/{name}:predict": model_post("TF Serving Predict: the task's numbers", PREDICT_ANSWER),
            "/v1/models/{name}:classify": model_post("The task's rows, labels included", {
                "type": "object", "properties": {"results": {"type": "array", "items": ROW}}}),
        },
    }
