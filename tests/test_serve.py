"""The inference service (tfllm.serve) over real HTTP on loopback, with a tiny trained run.

Servers run in this process (uvicorn in a thread, on a free port, models handed over already
loaded) and, for the command line and SIGTERM, as a subprocess. Requests go through urllib.

* every route, both TF Serving formats, raw strings and objects, pairs, answers equal to the
  Predictor's own;
* dynamic batching (16 concurrent requests, 50 ms window: a batch of more than one text);
* back-pressure (queue of 1: 503 with Retry-After), timeouts (504), /readyz while loading;
* every bad input: its 4xx and message, counted in /metrics, and the server still answers;
* the command line's one-line errors; SIGTERM: the request in flight is answered, exit 0;
* ``promtool check rules`` / ``test rules`` on deploy/prometheus (skipped without promtool).
"""
import asyncio
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, sentiment_rows, write_tsv
from tfllm.config import load_config
from tfllm.data.tokenization import encode_texts, load_tokenizer
from tfllm.errors import TfllmError
from tfllm import inference
from tfllm.inference import Predictor, inference_precision
from tfllm.serve import ModelSpec, Service, Settings
from tfllm.serve.__main__ import main
from tfllm.serve.app import create_app
from tfllm.serve.batcher import Batcher, count_truncated
from tfllm.serve.metrics import ServeMetrics
from tfllm.serve.config import model_specs
from tfllm.serve.server import bind, build_server, url_of
from tfllm.serve.service import check_servable

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
SETTINGS = Settings(max_batch_size=32, max_latency_ms=50, max_queue=64, timeout_ms=10000, max_instances=8,
                    max_chars=200, max_body_bytes=4000)
LONG_TEXT = " ".join(["a wonderful warm film with great acting"] * 5)  # > 24 tokens, < 200 characters


# --- helpers -----------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: object  # email.message.Message: case-insensitive
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(url: str, body=None, method: Optional[str] = None, timeout: float = 30) -> Answer:
    """One request; ``body`` JSON-encoded unless it is bytes. 4xx/5xx are answers, not errors."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(request, timeout=timeout) as r:
            return Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read())


def samples(url: str) -> dict:
    """``{(name, ((label, value), ...)): value}`` from /metrics."""
    text = http(url + "/metrics").body.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(url: str, name: str, **labels) -> float:
    return samples(url).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_ready(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if http(url + "/readyz", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {seconds} s")


class Slowed:
    """A predictor whose forward passes take ``seconds`` longer (0 until a test sets it)."""

    def __init__(self, predictor):
        self.inner, self.seconds = predictor, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_encoded(self, *args, **kwargs):  # what the batcher calls
        time.sleep(self.seconds)
        return self.inner.predict_encoded(*args, **kwargs)


class LiveServer:
    """The real app under uvicorn in a background thread, on a free loopback port; a model that
    fails to load stops it (as the command line's server)."""

    def __init__(self, specs, settings: Settings):
        self.service = Service(specs, settings, on_fatal=lambda: setattr(self.server, "should_exit", True))
        sock = bind("127.0.0.1", 0)
        self.url = url_of(sock)
        self.server = build_server(create_app(self.service), settings)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


class Overlapping:
    """A predictor that counts how many of its batches run at once (each takes 0.2 s longer)."""

    def __init__(self, predictor):
        self.inner, self.running, self.most, self.lock = predictor, 0, 0, threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_encoded(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.2)
            return self.inner.predict_encoded(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def loaded(predictor, delay: float = 0.0):
    """A loader handing over an already-loaded predictor (after ``delay`` seconds)."""
    def load():
        time.sleep(delay)
        return predictor
    return load


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tiny_checkpoint, tmp_path_factory):
    """One tiny classification run (pos/neg), trained for 8 steps."""
    from tfllm.train import run_training

    root = tmp_path_factory.mktemp("serve")
    train, dev = write_tsv(root / "train.tsv", sentiment_rows(4)), write_tsv(root / "dev.tsv", sentiment_rows(1))
    return run_training(load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.train_file={train}", f"data.dev_file={dev}",
        f"output_dir={root / 'sentiment'}", "train.max_steps=8", "train.batch_size=8", "train.learning_rate=2e-3",
        "train.warmup_ratio=0", "train.log_every=4", "train.eval_every=4", "train.checkpoint_every=4",
        "data.max_length=24"]))


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor.load(run_dir)


@pytest.fixture(scope="module")
def pair_predictor(predictor):
    """The same weights read as a sentence-pair model (BERT takes pairs as they are)."""
    pair = copy.copy(predictor)
    pair.task = copy.copy(predictor.task)
    pair.task.cfg = copy.deepcopy(predictor.task.cfg)
    pair.task.cfg.data.text_pair_column = "text_pair"
    return pair


@pytest.fixture(scope="module")
def server(run_dir, predictor, pair_predictor):
    """Models ``tiny`` (single texts), ``pairs`` (sentence pairs) and ``burst`` (the batching test's)."""
    specs = [ModelSpec("tiny", run_dir, "keras", run_dir, loaded(predictor)),
             ModelSpec("pairs", run_dir, "keras", run_dir, loaded(pair_predictor)),
             ModelSpec("burst", run_dir, "keras", run_dir, loaded(predictor))]
    live = LiveServer(specs, SETTINGS)
    wait_ready(live.url)
    yield live.url
    live.stop()


@pytest.fixture(scope="module")
def slow_server(run_dir, predictor):
    """Queue of one request, batching off, 2 s timeout; ``slow`` takes 0.3 s per forward pass,
    ``stuck`` 2.5 s. Loading takes 1 s: what /readyz and the routes said meanwhile is kept."""
    slow, stuck = Slowed(predictor), Slowed(predictor)
    specs = [ModelSpec("slow", run_dir, "keras", run_dir, loaded(slow, delay=1.0)),
             ModelSpec("stuck", run_dir, "keras", run_dir, loaded(stuck))]
    live = LiveServer(specs, Settings(max_batch_size=1, max_latency_ms=0, max_queue=1, timeout_ms=2000))
    time.sleep(0.3)
    while_loading = SimpleNamespace(readyz=http(live.url + "/readyz"), healthz=http(live.url + "/healthz"),
                                    status=http(live.url + "/v1/models/slow"),
                                    predict=http(live.url + "/v1/models/slow:predict", {"instances": ["a film"]}))
    wait_ready(live.url)
    slow.seconds, stuck.seconds = 0.3, 2.5
    yield SimpleNamespace(url=live.url, while_loading=while_loading)
    live.stop()


# --- routes ------------------------------------------------------------------------------------
def test_health_readiness_openapi_and_model_list(server):
    assert http(server + "/healthz").json() == {"status": "alive"}
    ready = http(server + "/readyz")
    assert ready.status == 200 and ready.json() == {
        "status": "ready", "models": {"tiny": "AVAILABLE", "pairs": "AVAILABLE", "burst": "AVAILABLE"}}
    paths = http(server + "/openapi.json").json()["paths"]
    assert {"/healthz", "/readyz", "/metrics", "/v1/models", "/v1/models/{name}", "/v1/models/{name}/metadata",
            "/v1/models/{name}:predict", "/v1/models/{name}:classify"} <= set(paths)
    assert [m["task"] for m in http(server + "/v1/models").json()["models"]] == ["classification"] * 3


def test_model_status_and_metadata(server):
    status = http(server + "/v1/models/tiny").json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert http(server + "/v1/models/tiny/versions/1").json() == status
    meta = http(server + "/v1/models/pairs/metadata").json()
    assert meta["model_spec"] == {"name": "pairs", "signature_name": "", "version": "1"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["inputs"]) == {"text", "text_pair"} and set(signature["outputs"]) == {"probabilities"}
    assert meta["tfllm"]["task"] == "classification" and meta["tfllm"]["labels"] == ["neg", "pos"]


def test_predict_both_formats_equal_the_predictor(server, predictor):
    texts = ["a wonderful warm film", "a dull and boring mess"]
    expected = [[row["probabilities"][label] for label in ("neg", "pos")] for row in predictor.predict(texts)]
    bodies = {"rows, strings": {"instances": texts},
              "rows, objects": {"instances": [{"text": t} for t in texts]},
              "rows, mixed, signature": {"instances": [texts[0], {"text": texts[1]}],
                                         "signature_name": "serving_default"},
              "columns, list": {"inputs": texts},
              "columns, named": {"inputs": {"text": texts}}}
    for what, body in bodies.items():
        answer = http(server + "/v1/models/tiny:predict", body)
        assert answer.status == 200, (what, answer.body)
        key = "outputs" if "inputs" in body else "predictions"
        assert list(answer.json()) == [key], what
        np.testing.assert_allclose(answer.json()[key], expected, atol=1e-4, err_msg=what)
    versioned = http(server + "/v1/models/tiny/versions/1:predict", bodies["rows, strings"])
    np.testing.assert_allclose(versioned.json()["predictions"], expected, atol=1e-4)


def test_classify_returns_the_task_rows(server, predictor):
    rows = http(server + "/v1/models/tiny:classify", {"instances": ["i loved every minute"]}).json()["results"]
    (expected,) = predictor.predict(["i loved every minute"])
    assert rows[0]["text"] == expected["text"] and rows[0]["label"] == expected["label"]
    assert rows[0]["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)


def test_pair_model(server, pair_predictor):
    pair = {"text": "a man plays a flute", "text_pair": "a man plays music"}
    (expected,) = pair_predictor.predict([pair["text"]], [pair["text_pair"]])
    answer = http(server + "/v1/models/pairs:predict", {"instances": [pair]})
    assert answer.json()["predictions"][0] == pytest.approx(list(expected["probabilities"].values()), abs=1e-4)
    columns = {"inputs": {"text": [pair["text"]], "text_pair": [pair["text_pair"]]}}
    assert http(server + "/v1/models/pairs:predict", columns).json()["outputs"] == answer.json()["predictions"]
    assert http(server + "/v1/models/pairs:classify", {"instances": [pair]}).json()["results"][0]["text_pair"] \
        == pair["text_pair"]


def test_count_truncated_tokenizes_again_only_texts_cut_to_the_limit(tiny_checkpoint):
    tokenizer = load_tokenizer(tiny_checkpoint)
    texts = ["a warm film", "one two three four five six", "word " * 20]  # 5, exactly 8, 22 tokens
    encoded = encode_texts(tokenizer, texts, None, max_length=8)
    assert [len(ids) for ids in encoded.input_ids] == [5, 8, 8]
    seen = []

    def spy(batch, pairs, **kwargs):
        seen.extend(batch)
        return tokenizer(batch, pairs, **kwargs)

    assert count_truncated(spy, 8, texts, None, encoded) == 1  # at the limit is not cut
    assert seen == texts[1:]
    assert count_truncated(tokenizer, 8, texts, None) == 1  # no encoding: every text counted again
    assert count_truncated(tokenizer, 8, texts[:1], None, encode_texts(tokenizer, texts[:1], None, 8)) == 0


def test_metrics(server):
    before = metric(server, "tfllm_serve_truncated_texts_total", model="tiny")
    assert http(server + "/v1/models/tiny:predict", {"instances": [LONG_TEXT, "a warm film"]}).status == 200
    m = samples(server)
    assert m[("tfllm_serve_truncated_texts_total", (("model", "tiny"),))] == before + 1
    names = {name for name, _ in m}
    assert {"tfllm_serve_requests_total", "tfllm_serve_request_seconds_bucket",
            "tfllm_serve_queue_wait_seconds_bucket", "tfllm_serve_inference_seconds_bucket",
            "tfllm_serve_batch_size_bucket", "tfllm_serve_queue_depth", "tfllm_serve_queue_capacity",
            "tfllm_serve_texts_total", "tfllm_serve_predictions_total", "tfllm_serve_reference_label_share",
            "tfllm_serve_model_load_seconds", "tfllm_serve_model_info", "tfllm_serve_ready"} <= names
    assert m[("tfllm_serve_requests_total", (("code", "200"), ("model", "tiny"), ("route", "predict")))] >= 1
    assert m[("tfllm_serve_ready", ())] == 1
    assert m[("tfllm_serve_queue_capacity", (("model", "tiny"),))] == SETTINGS.max_queue
    info = next(labels for name, labels in m if name == "tfllm_serve_model_info" and ("model", "tiny") in labels)
    assert {("task", "classification"), ("backend", "keras"), ("labels", "neg,pos"), ("precision", "float32")} <= set(info)
    shares = {dict(labels)["label"]: v for (name, labels), v in m.items()
              if name == "tfllm_serve_reference_label_share" and ("model", "tiny") in labels}
    assert set(shares) == {"neg", "pos"} and sum(shares.values()) == pytest.approx(1)
    predicted = sum(v for (name, labels), v in m.items()
                    if name == "tfllm_serve_predictions_total" and ("model", "tiny") in labels)
    assert predicted >= 2


def test_auto_precision_is_bf16_only_with_bf16_hardware_and_batches(monkeypatch):
    monkeypatch.setattr(inference, "bf16_hardware", lambda: ["avx512_bf16"])
    assert inference_precision("auto", batched=True)[0] == "bfloat16"
    assert inference_precision("auto", batched=False)[0] == "float32"  # one text at a time: fp32 is faster
    assert Settings(max_batch_size=1).keras_precision()[0] == "float32"
    assert Settings(max_batch_size=8).keras_precision()[0] == "bfloat16"
    assert inference_precision("float32")[0] == "float32"
    monkeypatch.setattr(inference, "bf16_hardware", lambda: [])
    assert inference_precision("auto")[0] == "float32"
    assert inference_precision("bfloat16")[0] == "bfloat16"  # asked for: done, emulated or not
    with pytest.raises(TfllmError, match="precision 'fp16': choose from float32, bfloat16, auto"):
        inference_precision("fp16")


def test_a_run_predicts_in_bfloat16_as_well(run_dir, predictor, tmp_path):
    import tensorflow as tf
    import tf_keras

    bf16 = Predictor.load(run_dir, precision="bfloat16")
    assert bf16.precision == "bfloat16" and tf_keras.mixed_precision.global_policy().name == "float32"
    dtypes = {layer.compute_dtype for layer in bf16.backend.model.bert.submodules if hasattr(layer, "kernel")}
    assert dtypes == {"bfloat16"}, dtypes
    kernels = {layer.kernel.dtype for layer in bf16.backend.model.submodules if isinstance(layer, tf_keras.layers.Dense)}
    assert kernels == {tf.bfloat16}, kernels  # cast once at load, not on every call
    texts = ["a warm, funny film", "dull and far too long", "fine"]
    logits, reference = bf16.logits(texts), predictor.logits(texts)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference, atol=0.05)
    assert [r["label"] for r in bf16.predict(texts)] == [r["label"] for r in predictor.predict(texts)]
    (tmp_path / "m.tflite").write_bytes(b"")
    with pytest.raises(TfllmError, match="computes as it was exported"):
        Predictor.load(tmp_path / "m.tflite", precision="bfloat16")


# --- batching and back-pressure ----------------------------------------------------------------
def test_concurrent_requests_are_batched(server, predictor):
    texts = [f"{t} {i}" for i, t in enumerate(["a warm film", "a dull plot"] * 8)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: http(server + "/v1/models/burst:predict", {"instances": [t]}), texts))
    expected = predictor.predict(texts)
    for answer, row in zip(answers, expected, strict=True):
        assert answer.status == 200
        assert answer.json()["predictions"][0] == pytest.approx(list(row["probabilities"].values()), abs=1e-4)
    m = samples(server)
    batches = m[("tfllm_serve_batch_size_count", (("model", "burst"),))]
    single = m[("tfllm_serve_batch_size_bucket", (("le", "1.0"), ("model", "burst")))]
    assert m[("tfllm_serve_batch_size_sum", (("model", "burst"),))] == 16
    assert batches < 16 and single < batches, "no forward pass took more than one request"


def test_a_batch_runs_as_length_sorted_forward_passes(predictor, monkeypatch):
    import tfllm.tasks.base as task_base

    passes = []
    real = task_base.pad_batch
    monkeypatch.setattr(task_base, "pad_batch",
                        lambda encoded, indices, *a: passes.append(encoded.lengths[indices].tolist()) or
                        real(encoded, indices, *a))
    batcher = Batcher("groups", predictor, ServeMetrics(), max_batch_size=8, max_latency_s=0, max_queue=8,
                      timeout_s=10, forward_batch_size=3)
    texts = ["a warm and wonderful film with great acting", "bad", "a dull plot", "i loved every minute",
             "fine", "a joy to read from start to end", "rude staff"]
    rows, _, _ = batcher.predict(texts, None)
    assert [len(p) for p in passes] == [3, 3, 1]
    flat = [n for p in passes for n in p]
    assert flat == sorted(flat)  # shortest first, so each pass pads little
    expected = predictor.predict(texts)
    assert [r["label"] for r in rows] == [r["label"] for r in expected]
    for row, want in zip(rows, expected):
        assert list(row["probabilities"].values()) == pytest.approx(list(want["probabilities"].values()), abs=1e-5)


def test_the_server_pads_forward_passes_to_a_multiple_of_8(server, monkeypatch):
    """Bounded shapes (--pad-to-multiple-of, 8): a long-running server's memory stays flat."""
    import tfllm.tasks.base as task_base

    widths, real = [], task_base.pad_batch

    def spy(*args):
        padded = real(*args)
        widths.append(padded[0]["input_ids"].shape[1])
        return padded

    monkeypatch.setattr(task_base, "pad_batch", spy)
    texts = ["bad", "a warm and wonderful film with great acting"]
    assert http(server + "/v1/models/tiny:predict", {"instances": texts}).status == 200
    assert widths and all(width % SETTINGS.pad_to_multiple_of == 0 for width in widths), widths


def test_warm_up_all_runs_every_forward_pass_shape_before_ready(run_dir, predictor, monkeypatch):
    """--warm-up all: every (batch, width) a forward pass can have has run once before /readyz is
    200, so serving allocates no new oneDNN state (memory flat) and meets no first-shape delay."""
    import tfllm.tasks.base as task_base

    shapes, real = set(), task_base.pad_batch

    def spy(*args):
        padded = real(*args)
        shapes.add(padded[0]["input_ids"].shape)
        return padded

    monkeypatch.setattr(task_base, "pad_batch", spy)
    settings = Settings(max_batch_size=8, forward_batch_size=3, warm_up="all")
    live = LiveServer([ModelSpec("warm", run_dir, "keras", run_dir, loaded(predictor))], settings)
    try:
        wait_ready(live.url)
        expected = {(batch, width) for width in (8, 16, 24) for batch in (1, 2, 3)}  # max_length 24
        assert set(predictor.forward_shapes(3)) == expected
        assert shapes >= expected, sorted(expected - shapes)
        warmed = set(shapes)
        texts = ["bad", "a warm and wonderful film with great acting", LONG_TEXT, "fine", "dull"]
        assert http(live.url + "/v1/models/warm:predict", {"instances": texts}).status == 200
        assert shapes == warmed  # serving ran only shapes already warmed up
    finally:
        live.stop()


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_threads_run_that_many_batches_at_once(run_dir, predictor, threads):
    overlapping = Overlapping(predictor)
    settings = Settings(max_batch_size=1, max_latency_ms=0, batch_threads=threads)
    live = LiveServer([ModelSpec("both", run_dir, "keras", run_dir, loaded(overlapping))], settings)
    try:
        wait_ready(live.url)
        texts = ["a warm film", "dull", "fine acting", "too long"]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: http(live.url + "/v1/models/both:predict", {"instances": [t]}), texts))
        assert [a.status for a in answers] == [200] * 4
        for answer, row in zip(answers, predictor.predict(texts)):
            assert answer.json()["predictions"][0] == pytest.approx(list(row["probabilities"].values()), abs=1e-4)
        assert overlapping.most == threads
    finally:
        live.stop()


def test_readiness_while_loading(slow_server):
    loading = slow_server.while_loading
    assert loading.healthz.status == 200
    assert loading.readyz.status == 503 and loading.readyz.json()["status"] == "loading"
    assert loading.status.json()["model_version_status"][0]["state"] == "LOADING"
    assert loading.predict.status == 503 and "loading" in loading.predict.json()["error"]
    assert loading.predict.headers["Retry-After"] == "5"
    assert http(slow_server.url + "/readyz").status == 200


def test_full_queue_answers_503_with_retry_after(slow_server):
    url = slow_server.url
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: http(url + "/v1/models/slow:predict", {"instances": [f"film {i}"]}),
                                range(6)))
    refused = [a for a in answers if a.status == 503]
    assert refused and any(a.status == 200 for a in answers), [a.status for a in answers]
    assert all(a.headers["Retry-After"] == "1" and "queue full" in a.json()["error"] for a in refused)
    assert metric(url, "tfllm_serve_rejected_requests_total", model="slow", reason="queue_full") == len(refused)
    assert http(url + "/v1/models/slow:predict", {"instances": ["still serving"]}).status == 200


def test_request_past_the_timeout_gets_504(slow_server):
    start = time.monotonic()
    answer = http(slow_server.url + "/v1/models/stuck:predict", {"instances": ["a film"]})
    assert answer.status == 504 and "--timeout-ms" in answer.json()["error"]
    assert time.monotonic() - start < 2.4
    assert metric(slow_server.url, "tfllm_serve_rejected_requests_total", model="stuck", reason="timeout") == 1


def test_a_model_that_fails_to_load_stops_the_server(run_dir):
    def broken():
        raise TfllmError(f"{run_dir}/label_map.json line 2: malformed JSON")
    live = LiveServer([ModelSpec("broken", run_dir, "keras", run_dir, broken)], SETTINGS)
    live.thread.join(30)
    assert not live.thread.is_alive()
    assert str(live.service.failure) == f"model broken: {run_dir}/label_map.json line 2: malformed JSON"
    assert live.service.models["broken"].state == "FAILED"


# --- bad input ---------------------------------------------------------------------------------
@dataclass
class Bad:
    body: object
    status: int
    words: str
    reason: Optional[str]
    model: str = "tiny"
    path: str = ":predict"
    method: str = "POST"
    chunked: bool = False  # sent in 1 kB chunks without a Content-Length (send_chunked)


BAD = {
    "malformed JSON": Bad(b'{"instances": [', 400, "malformed JSON", "malformed_json"),
    "body not an object": Bad(b'["a film"]', 400, "must be a JSON object", "not_an_object"),
    "empty body": Bad(b"", 400, "body is empty", "empty_body"),
    "missing field": Bad({}, 400, 'give exactly one of "instances"', "missing_field"),
    "misspelt field": Bad({"instance": ["a film"]}, 400, "unknown field 'instance'", "unknown_field"),
    "both formats": Bad({"instances": ["a"], "inputs": ["a"]}, 400, "got both", "missing_field"),
    "instances not a list": Bad({"instances": "a film"}, 400, "instances must be a list", "wrong_type"),
    "inputs not a list": Bad({"inputs": 3}, 400, "inputs must be a list", "wrong_type"),
    "non-string instance": Bad({"instances": ["ok", 3]}, 400, "instances[1] must be a string", "not_a_string"),
    "object without text": Bad({"instances": [{"txt": "a"}]}, 400, "unknown key 'txt'", "unknown_field"),
    "empty list": Bad({"instances": []}, 400, "instances is empty", "empty_list"),
    "too many instances": Bad({"instances": ["a film"] * 9}, 400, "9 texts, over the limit of 8", "too_many_instances"),
    "text over the limit": Bad({"instances": ["a" * 201]}, 400, "201 characters", "text_too_long"),
    "empty text": Bad({"instances": ["ok", "   "]}, 400, "instances[1] is empty", "empty_text"),
    "non-UTF-8 body": Bad(b'{"instances": ["caf\xe9"]}', 400, "not valid UTF-8", "not_utf8"),
    "lone surrogate": Bad(b'{"instances": ["\\ud800"]}', 400, "lone surrogate", "not_unicode"),
    "wrong signature": Bad({"instances": ["a"], "signature_name": "x"}, 400, "serving_default", "bad_signature"),
    "body over the size limit": Bad(b'{"instances": ["' + b"a" * 5000 + b'"]}', 413, "--max-body-bytes",
                                    "body_too_large"),
    "chunked body over the size limit": Bad(b'{"instances": ["' + b"a" * 5000 + b'"]}', 413, "--max-body-bytes",
                                            "body_too_large", chunked=True),
    "unknown model": Bad({"instances": ["a"]}, 404, "no model named 'nope'", "unknown_model", model="nope"),
    "unknown version": Bad({"instances": ["a"]}, 404, "no version '2'", "unknown_version",
                           path="/versions/2:predict"),
    "unknown method": Bad({"instances": ["a"]}, 404, "unknown method :explode", "unknown_method", path=":explode"),
    "GET on predict": Bad(None, 405, "GET is not allowed", "wrong_method", method="GET"),
    "pair model without text_pair": Bad({"instances": ["a man plays"]}, 400, "instances[0] has no text_pair",
                                        "missing_text_pair", model="pairs"),
    "pair columns of two lengths": Bad({"inputs": {"text": ["a", "b"], "text_pair": ["c"]}}, 400,
                                       "inputs.text_pair 1", "length_mismatch", model="pairs"),
    "text_pair to a single-text model": Bad({"instances": [{"text": "a", "text_pair": "b"}]}, 400,
                                            "takes single texts", "unexpected_text_pair"),
}


def send_chunked(url: str, body: bytes) -> Answer:
    """POST ``body`` in 1 kB chunks without a Content-Length, written in one go (urllib writes
    chunk by chunk, and the server may have answered 413 and closed before the last)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000]) for i in range(0, len(body), 1000))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + chunks + b"0\r\n\r\n")
        response = b""
        while data := sock.recv(65536):
            response += data
    status_line, _, rest = response.partition(b"\r\n")
    return Answer(int(status_line.split()[1]), {}, rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_counted(server, case):
    bad = BAD[case]
    labels = {"model": "unknown" if bad.model == "nope" else bad.model, "reason": bad.reason}
    before = metric(server, "tfllm_serve_rejected_requests_total", **labels)
    url = f"{server}/v1/models/{bad.model}{bad.path}"
    answer = send_chunked(url, bad.body) if bad.chunked else http(url, bad.body, bad.method)
    assert answer.status == bad.status, answer.body
    assert bad.words in answer.json()["error"], answer.json()
    assert metric(server, "tfllm_serve_rejected_requests_total", **labels) == before + 1
    assert http(server + "/v1/models/tiny:predict", {"instances": ["still serving"]}).status == 200


def test_unknown_route_is_json_404(server):
    before = metric(server, "tfllm_serve_requests_total", model="", route="unmatched", code="404")
    answer = http(server + "/v2/anything")
    assert answer.status == 404 and "/openapi.json" in answer.json()["error"]
    assert http(server + "/healthz", b"{}", "DELETE").status == 405
    assert metric(server, "tfllm_serve_requests_total", model="", route="unmatched", code="404") == before + 1


def test_accepted_connections_have_tcp_nodelay():
    """bind()'s socket says it is TCP, so asyncio sets TCP_NODELAY on every accepted connection
    (with proto 0 it does not, and Nagle delays each keep-alive response by a delayed ACK)."""
    async def accept_one() -> int:
        accepted = asyncio.get_running_loop().create_future()

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        sock = bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Protocol, sock=sock)
        try:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            nodelay = await asyncio.wait_for(accepted, 10)
            writer.close()
            return nodelay
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(accept_one()) != 0


def test_keep_alive_requests_are_not_held_by_nagle(server):
    """Requests on one keep-alive connection answer in milliseconds, not a delayed ACK (~40 ms) each."""
    host, port = server.removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(port), timeout=30)
    seconds = []
    try:
        for _ in range(15):
            start = time.perf_counter()
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            seconds.append(time.perf_counter() - start)
    finally:
        connection.close()
    assert np.median(seconds) < 0.03, [round(1000 * s, 1) for s in seconds]


# --- command line ------------------------------------------------------------------------------
def test_model_specs_names_and_backends(run_dir, tmp_path):
    """Run directories by --backend (Keras by default), exports as what they are (files made
    here: resolving reads no model)."""
    (tmp_path / "model_int8.tflite").write_bytes(b"")
    (tmp_path / "saved_model" / "1").mkdir(parents=True)
    (tmp_path / "saved_model" / "1" / "saved_model.pb").write_bytes(b"")
    specs = model_specs(str(run_dir), [f"second={run_dir}", f"lite={tmp_path}/model_int8.tflite",
                                       f"sm={tmp_path}/saved_model/1"])
    assert [(s.name, s.backend, s.path) for s in specs] == [
        ("sentiment", "keras", run_dir), ("second", "keras", run_dir),
        ("lite", "tflite", tmp_path / "model_int8.tflite"), ("sm", "saved_model", tmp_path / "saved_model" / "1")]
    (spec,) = model_specs(str(run_dir), [], tflite=str(tmp_path / "model_int8.tflite"))
    assert (spec.name, spec.backend, spec.path, spec.run_dir) == ("sentiment", "tflite",
                                                                  tmp_path / "model_int8.tflite", run_dir)


def test_masked_lm_runs_are_refused(run_dir):
    mlm = SimpleNamespace(task=SimpleNamespace(name="masked_lm"))
    with pytest.raises(TfllmError, match="masked_lm run; the service serves classification.*--fill-mask"):
        check_servable(mlm, ModelSpec("mlm", run_dir, "keras"))


@pytest.mark.parametrize("args, words", [
    ([], "nothing to serve"),
    (["{tmp}/missing"], "missing not found"),
    (["{tmp}"], "is not a tfllm run directory"),
    (["{run}", "--max-batch-size", "0"], "--max-batch-size must be at least 1"),
    (["{run}", "--timeout-ms", "0"], "--timeout-ms must be positive"),
    (["{run}", "--pad-to-multiple-of", "0"], "--pad-to-multiple-of must be at least 1"),
    (["{run}", "--precision", "fp16"], "--precision 'fp16': choose from float32, bfloat16, auto"),
    (["{run}", "--warm-up", "some"], "--warm-up 'some': choose from one, all"),
    (["{run}", "--batch-threads", "0"], "--batch-threads must be at least 1"),
    (["--model", "sst2"], "--model 'sst2': give NAME=PATH"),
    (["--model", "a b={run}"], "model name 'a b'"),
    (["--model", "x={run}", "--model", "x={run}"], "'x' is given twice"),
    (["{run}", "--backend", "tflite"], "export one with python -m tfllm.export"),
    (["{run}", "--backend", "saved_model"], "--format saved_model"),
    (["{run}", "--port", "70000"], "--port must be 0-65535"),
    (["{run}", "--precision", "bfloat16", "--model", "lite={tmp}/m.tflite"], "lite is served from an exported file"),
])
def test_command_line_errors(run_dir, tmp_path, capsys, args, words):
    (tmp_path / "m.tflite").write_bytes(b"")
    argv = [a.format(run=run_dir, tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error: ") and "\n" not in err and words in err, err


def test_sigterm_answers_the_request_in_flight_and_exits_0(run_dir, tmp_path):
    """``python -m tfllm.serve RUN --port 0``: the printed URL serves; a SIGTERM during a request
    (each forward pass held 2.5 s by TFLLM_SERVE_DELAY_MS) closes the port, answers it, exits 0."""
    env = {**os.environ, "TFLLM_SERVE_DELAY_MS": "2500"}
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tfllm.serve", str(run_dir), "--port", "0"], cwd=ROOT,
                                   env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith("serving sentiment on http://127.0.0.1:"), first + log.read_text()
        url = first.split()[-1]
        wait_ready(url)
        answers = []
        request = threading.Thread(target=lambda: answers.append(
            http(url + "/v1/models/sentiment:predict", {"instances": ["a warm film"]})))
        request.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        refused_by = time.monotonic() + 2
        while time.monotonic() < refused_by and accepts(url):
            time.sleep(0.05)
        assert not accepts(url), "still accepting connections after SIGTERM"
        request.join(30)
        assert process.wait(60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert answers and answers[0].status == 200 and len(answers[0].json()["predictions"]) == 1
    assert "stopped: every queued request answered" in log.read_text()


def accepts(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


# --- alert rules -------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH")
def test_alert_rules_pass_promtool():
    rules = ROOT / "deploy" / "prometheus"
    check = subprocess.run(["promtool", "check", "rules", str(rules / "alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=rules, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
