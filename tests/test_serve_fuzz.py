"""Fuzzing the inference service over real HTTP on loopback: hypothesis makes requests (methods,
paths, odd model names, headers, bodies: malformed JSON, wrong types, huge numbers, deep nesting,
odd Unicode, lone surrogates, bytes that are not UTF-8), sends each on a raw socket and checks
that nothing is answered 5xx and every refusal is JSON ``{"error": ...}``; the server still answers
/healthz and a valid predict afterwards.

Seeded and bounded: ``derandomize=True`` (the same examples every run), no example database, a
few hundred requests against a tiny classification, sentence-pair and NER model.

What it found is kept as specific tests at the end: a JSON number of more than 4300 digits
(Python's int limit: ValueError, 500), and an NER text of only characters the tokenizer drops
(control characters, zero-width spaces: "text 1 has no words", 500 for every request batched
with it; now a 400 for that text, and a failed forward pass is retried request by request).
"""
import json
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serve_helpers import live_server, tiny_run
from test_serve import http
from tfllm.serve import Settings

LIMITS = Settings(max_batch_size=16, max_latency_ms=2, max_queue=64, timeout_ms=20000, max_instances=8,
                  max_chars=300, max_body_bytes=20000)
MODELS = ("tiny", "pairs", "ner")
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TEXT_ROUTES = ("/", "/metrics")  # the page (HTML) and the metrics (text) do not answer JSON


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    live = live_server({"tiny": tiny_run("classification", tiny_checkpoint, tmp_path_factory),
                        "pairs": tiny_run("regression", tiny_checkpoint, tmp_path_factory),
                        "ner": tiny_run("token_classification", tiny_checkpoint, tmp_path_factory)}, LIMITS)
    yield live.url
    live.stop()


# --- sending -----------------------------------------------------------------------------------
def send(url: str, method: str, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 request on its own connection, bytes as given; ``(status, headers, body)``."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        response = b""
        while data := sock.recv(65536):
            response += data
    while response.startswith(b"HTTP/1.1 1"):  # 100 Continue (Expect): the answer follows
        response = response.partition(b"\r\n\r\n")[2]
    head_bytes, _, content = response.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), fields, content


# --- strategies --------------------------------------------------------------------------------
ODD_CHARS = st.sampled_from(["\x00", "\x07", "\u200b", "\u200d", "\ufeff", "\u202e", "\u0301", "\ud800",
                             "\udfff", "\U0001f600", "\U0010ffff", "\u00ad", "\r\n", "\t", " ", "é", "中",
                             "[MASK]", "[SEP]", "##", '"', "\\", "<b>"])
TEXTS = st.one_of(
    st.text(max_size=40),
    st.lists(ODD_CHARS, min_size=1, max_size=8).map("".join),
    st.builds(lambda word, odd: word + odd, st.sampled_from(["Anna Berg", "a film", "x"]), ODD_CHARS),
    st.integers(290, 310).map(lambda n: "Oslo " * (n // 5)),  # around --max-chars
)
JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
INSTANCE = st.one_of(TEXTS, JUNK, st.fixed_dictionaries({"text": TEXTS}, optional={"text_pair": TEXTS | JUNK}),
                     st.dictionaries(st.sampled_from(["text", "text_pair", "txt"]), TEXTS | JUNK, max_size=3))
INSTANCES = st.lists(INSTANCE, max_size=10)
API_BODY = st.one_of(
    st.fixed_dictionaries({"instances": INSTANCES}, optional={"signature_name": JUNK | st.just("serving_default")}),
    st.fixed_dictionaries({"inputs": INSTANCES | st.dictionaries(st.sampled_from(["text", "text_pair", "x"]),
                                                                 st.lists(TEXTS | JUNK, max_size=5) | JUNK)}),
    st.dictionaries(st.sampled_from(["instances", "inputs", "signature_name", "extra"]), JUNK | INSTANCES),
    JUNK,
)


ODD_TEXTS = st.lists(st.text(min_size=1, max_size=6) | ODD_CHARS | st.sampled_from(["Anna", "Oslo", "film"]),
                     min_size=1, max_size=8).map(" ".join)


def well_formed(model: str, texts: list, pairs: list, columnar: bool) -> dict:
    """A body of the right shape for ``model`` (pairs for the pair model) around odd texts."""
    if model == "pairs":
        return {"instances": [{"text": t, "text_pair": p} for t, p in zip(texts, pairs)]}
    return {"inputs": texts} if columnar else {"instances": texts}


def encoded(value) -> bytes:
    """JSON as a client would send it (lone surrogates as \\ud800 escapes: valid JSON)."""
    return json.dumps(value, allow_nan=True).encode()


def mutated(data: bytes, position: int, byte: int) -> bytes:
    """``data`` with one byte replaced (or appended): broken JSON, or bytes that are not UTF-8."""
    position %= len(data) + 1
    return data[:position] + bytes([byte]) + data[position + 1:]


BODIES = st.one_of(
    API_BODY.map(encoded),
    st.builds(mutated, API_BODY.map(encoded), st.integers(0, 10_000), st.integers(0, 255)),
    API_BODY.map(encoded).map(lambda data: data[:len(data) // 2]),  # cut short
    st.binary(max_size=200),
    st.integers(4200, 6000).map(lambda n: b'{"instances": [' + b"9" * n + b"]}"),  # over Python's int limit
    st.integers(1, 3000).map(lambda n: b'{"instances": ' + b"[" * n + b"]" * n + b"}"),  # deep nesting
    st.just(b'{"instances": ["a film"]}'),
)
NAMES = st.one_of(st.sampled_from(MODELS), st.text(max_size=12),
                  st.sampled_from(["", ".", "..", "%2e%2e", "tiny%00", "TINY", "tiny ", "nér", "a" * 300]))
SUFFIXES = st.sampled_from(["", ":predict", ":classify", "/metadata", "/versions/1", "/versions/1:predict",
                            "/versions/2:classify", "/versions/:predict", ":", ":PREDICT", "::predict", "/",
                            "/metadata:predict", "/versions/1/metadata", ":predict/x"])
PLAIN_PATHS = st.sampled_from(["/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/models", "/v1/models/",
                               "/v1", "/v2/models/tiny:predict", "//v1/models", "/index.html", "/%ff", "/?q=%00"])


def model_path(name: str, suffix: str) -> str:
    return "/v1/models/" + urllib.parse.quote(name, safe="%") + suffix


PATHS = st.one_of(st.builds(model_path, NAMES, SUFFIXES), PLAIN_PATHS)
METHODS = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"])
HEADERS = st.dictionaries(st.sampled_from(["Content-Type", "Accept", "Accept-Encoding", "Expect", "X-Junk"]),
                          st.sampled_from(["application/json", "text/plain", "*/*", "gzip", "", "x" * 200,
                                           "application/json; charset=latin-1"]), max_size=3)


# --- the properties ----------------------------------------------------------------------------
def check_answer(method: str, path: str, status: int, headers: dict, body: bytes) -> None:
    """No 5xx; a refusal says why in JSON; a success is JSON but for the page and the metrics."""
    assert status < 500, (status, body[:300])
    if method == "HEAD" or headers.get("content-length") == "0":
        return
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error, str) and error, body[:300]
    elif urllib.parse.urlsplit(path).path not in TEXT_ROUTES:
        json.loads(body)


def fuzz(url: str, method: str, path: str, body: bytes, headers: dict) -> None:
    if "Expect" in headers:
        headers["Expect"] = "100-continue"  # any other Expect is the HTTP parser's business (417)
    status, answer_headers, answer = send(url, method, path, body, headers)
    event(f"status {status}")  # the spread of answers: pytest --hypothesis-show-statistics
    check_answer(method, path, status, answer_headers, answer)


@FUZZ
@given(method=METHODS, path=PATHS, headers=HEADERS,
       body=st.sampled_from([b"", b'{"instances": ["a film"]}', b'{"inputs": ["Oslo"]}', b"{", b"\xff\xfe"]))
def test_any_method_path_and_headers(server, method, path, headers, body):
    fuzz(server, method, path, body, headers)


@FUZZ
@given(model=st.sampled_from(MODELS), verb=st.sampled_from([":predict", ":classify"]), body=BODIES, headers=HEADERS)
def test_any_body_to_the_models(server, model, verb, body, headers):
    fuzz(server, "POST", f"/v1/models/{model}{verb}", body, headers)


@FUZZ
@given(model=st.sampled_from(MODELS), verb=st.sampled_from([":predict", ":classify"]), body=API_BODY)
def test_bodies_shaped_like_the_api(server, model, verb, body):
    """Bodies of the API's fields with odd values: each is answered 200 or refused 4xx."""
    fuzz(server, "POST", f"/v1/models/{model}{verb}", encoded(body), {"Content-Type": "application/json"})


@settings(FUZZ, max_examples=50)  # each reaches a model: about 80 ms
@given(model=st.sampled_from(MODELS), verb=st.sampled_from([":predict", ":classify"]), columnar=st.booleans(),
       texts=st.lists(ODD_TEXTS, min_size=1, max_size=4), pairs=st.lists(ODD_TEXTS, min_size=4, max_size=4))
def test_odd_texts_to_the_models(server, model, verb, columnar, texts, pairs):
    """Well-formed bodies of odd texts (control and zero-width characters, surrogates, emoji,
    special tokens): most reach the model; each is answered 200 or refused 4xx."""
    body = encoded(well_formed(model, texts, pairs, columnar))
    fuzz(server, "POST", f"/v1/models/{model}{verb}", body, {"Content-Type": "application/json"})


def test_the_server_still_serves_after_fuzzing(server):
    """Runs after the fuzz tests (file order): alive, ready, and every model predicts."""
    assert http(server + "/healthz").json() == {"status": "alive"}
    assert http(server + "/readyz").status == 200
    for model, instance in [("tiny", "a warm film"), ("pairs", {"text": "a man plays", "text_pair": "a man sings"}),
                            ("ner", "Anna Berg visited Oslo")]:
        answer = http(f"{server}/v1/models/{model}:predict", {"instances": [instance]})
        assert answer.status == 200 and len(answer.json()["predictions"]) == 1, (model, answer.body)


# --- what the fuzzing found --------------------------------------------------------------------
def test_a_number_past_pythons_digit_limit_is_malformed_json(server):
    """json.loads raises ValueError (not JSONDecodeError) for an int of more than 4300 digits."""
    answer = http(server + "/v1/models/tiny:predict", b'{"instances": [' + b"9" * 5000 + b"]}")
    assert answer.status == 400, answer.body
    assert answer.json()["error"] == "malformed JSON: a number of more than 4300 digits"


@pytest.mark.parametrize("text", ["\x00", "\u200b\u200b", "\x07 \ufeff"])
def test_an_ner_text_with_no_words_is_refused(server, text):
    """Characters BERT's normalizer drops leave NER no word to tag: 400, naming the text."""
    rows = http(server + "/v1/models/ner:classify", {"instances": ["Oslo", text]})
    assert rows.status == 400 and rows.json()["error"].startswith("instances[1] has no words"), rows.body
    columns = http(server + "/v1/models/ner:predict", {"inputs": [text]})
    assert columns.status == 400 and columns.json()["error"].startswith("inputs[0] has no words"), columns.body


class FailsOn:
    """A predictor that fails on any batch holding ``word``, and records the batches it ran."""

    def __init__(self, predictor, word: str):
        self.inner, self.word, self.batches = predictor, word, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_encoded(self, texts, *args, **kwargs):  # what the batcher calls
        self.batches.append(list(texts))
        if self.word in texts:
            raise RuntimeError(f"the model failed on {self.word!r}")
        return self.inner.predict_encoded(texts, *args, **kwargs)


def test_a_failing_request_fails_no_other_request_in_its_batch(tiny_checkpoint, tmp_path_factory):
    """Before: the NER "no words" error failed every request batched with it. Now a failed
    forward pass is retried request by request: only the culprit gets its 500."""
    run_dir, predictor = tiny_run("classification", tiny_checkpoint, tmp_path_factory)
    failing = FailsOn(predictor, "boom")
    live = live_server({"flaky": (run_dir, failing)},
                       Settings(max_batch_size=8, max_latency_ms=300, max_queue=8, timeout_ms=20000))
    try:
        texts = ["a warm film", "boom", "a dull film", "fine"]
        with ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(lambda t: http(live.url + "/v1/models/flaky:classify", {"instances": [t]}), texts))
    finally:
        live.stop()
    assert [a.status for a in answers] == [200, 500, 200, 200], [a.body for a in answers]
    assert "the model failed on 'boom'" in answers[1].json()["error"]
    answered = [a.json()["results"][0]["text"] for a in answers if a.status == 200]
    assert answered == ["a warm film", "a dull film", "fine"]
    assert any(len(batch) > 1 and "boom" in batch for batch in failing.batches), failing.batches
