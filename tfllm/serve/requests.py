"""Reading and checking a request: the body (size, UTF-8, JSON object) and TF Serving's two
formats, each bad input a :class:`Refused` whose message names the problem and where it is.

Row format (``instances``) and columnar format (``inputs``), texts as strings or objects::

    {"instances": ["a warm film", "a dull film"]}
    {"instances": [{"text": "a man plays", "text_pair": "a man plays music"}]}
    {"inputs": ["a warm film", "a dull film"]}
    {"inputs": {"text": ["a man plays"], "text_pair": ["a man plays music"]}}

    >>> parse_instances(parse_json(b'{"instances": ["a film"]}'), pair_task=False, limits=Settings())
    Instances(texts=['a film'], pairs=None, columnar=False)
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Optional

from tfllm.data.token_tags import words_with_offsets
from tfllm.serve.config import Settings

FIELDS = ("instances", "inputs", "signature_name")
INSTANCE_KEYS = ("text", "text_pair")
SIGNATURES = ("", "serving_default")


class Refused(Exception):
    """A request the service refuses: ``status`` (4xx), a one-line message and a short ``reason``
    (the metrics' label: a fixed vocabulary, never user data)."""

    def __init__(self, message: str, reason: str, status: int = 400, headers: Optional[dict] = None):
        super().__init__(message)
        self.message, self.reason, self.status, self.headers = message, reason, status, headers or {}


@dataclass
class Instances:
    """The texts of one request, with their pairs (pair models) and which format it used."""
    texts: list[str]
    pairs: Optional[list[str]]
    columnar: bool

    def __len__(self) -> int:
        return len(self.texts)


def json_type(value: Any) -> str:
    """JSON's name for a decoded value's type, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def check_content_length(header: Optional[str], limit: int) -> None:
    """Refuse a declared body over ``limit`` bytes before reading it (the HTTP server has
    refused a Content-Length that is not a number already)."""
    if header is not None and header.isdigit() and int(header) > limit:
        raise body_too_large(int(header), limit)


def body_too_large(size: int, limit: int) -> Refused:
    return Refused(f"body is {size} bytes or more, over the limit of {limit} (--max-body-bytes)",
                   "body_too_large", 413)


def parse_json(body: bytes) -> dict:
    """The body as a JSON object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused(f"body is not valid UTF-8 (byte {e.start}: {body[e.start:e.start + 1]!r})",
                      "not_utf8") from None
    if not text.strip():
        raise Refused('body is empty; send a JSON object like {"instances": ["a text"]}', "empty_body")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise Refused(f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})", "malformed_json") from None
    except RecursionError:
        raise Refused("malformed JSON: nested too deeply", "malformed_json") from None
    except ValueError:  # an integer past Python's digit limit (not a JSONDecodeError)
        raise Refused(f"malformed JSON: a number of more than {sys.get_int_max_str_digits()} digits",
                      "malformed_json") from None
    if not isinstance(value, dict):
        raise Refused(f'body must be a JSON object like {{"instances": [...]}}, got {json_type(value)}',
                      "not_an_object")
    return value


def parse_instances(body: dict, pair_task: bool, limits: Settings) -> Instances:
    """The texts of a predict / classify body in either TF Serving format, every one checked."""
    unknown = [key for key in body if key not in FIELDS]
    if unknown:
        raise Refused(f"unknown field {unknown[0]!r}; give \"instances\" (rows) or \"inputs\" (columns)",
                      "unknown_field")
    if body.get("signature_name", "") not in SIGNATURES:
        raise Refused(f"signature_name {body['signature_name']!r}: this model has serving_default only",
                      "bad_signature")
    if ("instances" in body) == ("inputs" in body):
        which = "both" if "instances" in body else "neither"
        raise Refused(f'give exactly one of "instances" (rows) or "inputs" (columns), got {which}',
                      "missing_field")
    if "instances" in body:
        texts, pairs = rows(body["instances"], "instances")
    else:
        texts, pairs = columns(body["inputs"])
    where = "instances" if "instances" in body else "inputs"
    check_count(len(texts), where, limits.max_instances)
    check_pairs(pairs, pair_task, where)
    for i, text in enumerate(texts):
        check_text(text, item_name(where, i, "text", pairs is not None), limits.max_chars)
        if pairs is not None:
            check_text(pairs[i], item_name(where, i, "text_pair", True), limits.max_chars)
    return Instances(texts, pairs, "inputs" in body)


def rows(values: Any, where: str) -> tuple[list, Optional[list]]:
    """Texts and pairs from a list of strings or ``{"text", "text_pair"}`` objects."""
    if not isinstance(values, list):
        raise Refused(f"{where} must be a list of texts, got {json_type(values)}", "wrong_type")
    texts, pairs = [], []
    for i, value in enumerate(values):
        if isinstance(value, dict):
            unknown = [key for key in value if key not in INSTANCE_KEYS]
            if unknown:
                raise Refused(f"{where}[{i}] has unknown key {unknown[0]!r}; an instance is a string or "
                              '{"text": ..., "text_pair": ...}', "unknown_field")
            if "text" not in value:
                raise Refused(f'{where}[{i}] has no "text"', "missing_field")
            texts.append(value["text"])
            pairs.append(value.get("text_pair"))
        else:
            texts.append(value)
            pairs.append(None)
    return texts, pairs_or_none(pairs)


def columns(value: Any) -> tuple[list, Optional[list]]:
    """Texts and pairs from ``inputs``: a list (the one input) or ``{"text": [...], "text_pair": [...]}``."""
    if isinstance(value, list):
        return rows(value, "inputs")
    if not isinstance(value, dict):
        raise Refused(f'inputs must be a list of texts or {{"text": [...], "text_pair": [...]}}, got '
                      f"{json_type(value)}", "wrong_type")
    unknown = [key for key in value if key not in INSTANCE_KEYS]
    if unknown:
        raise Refused(f"inputs has unknown input {unknown[0]!r}; inputs are \"text\" and \"text_pair\"",
                      "unknown_field")
    if "text" not in value:
        raise Refused('inputs has no "text"', "missing_field")
    for key in value:
        if not isinstance(value[key], list):
            raise Refused(f"inputs.{key} must be a list of texts, got {json_type(value[key])}", "wrong_type")
    texts, pairs = value["text"], value.get("text_pair")
    if pairs is not None and len(pairs) != len(texts):
        raise Refused(f"inputs.text has {len(texts)} texts but inputs.text_pair {len(pairs)}",
                      "length_mismatch")
    return list(texts), None if pairs is None else list(pairs)


def pairs_or_none(pairs: list) -> Optional[list]:
    return None if all(p is None for p in pairs) else pairs


def check_count(count: int, where: str, limit: int) -> None:
    if count == 0:
        raise Refused(f"{where} is empty; send at least one text", "empty_list")
    if count > limit:
        raise Refused(f"{where} has {count} texts, over the limit of {limit} per request (--max-instances)",
                      "too_many_instances")


def check_pairs(pairs: Optional[list], pair_task: bool, where: str) -> None:
    """A pair model needs every text_pair; a single-text model takes none."""
    if pair_task:
        missing = 0 if pairs is None else next((i for i, p in enumerate(pairs) if p is None), None)
        if missing is not None:
            raise Refused(f'{where}[{missing}] has no text_pair: this model takes sentence pairs, '
                          'give {"text": ..., "text_pair": ...}', "missing_text_pair")
    elif pairs is not None:
        raise Refused(f"{where}: this model takes single texts, not text_pair", "unexpected_text_pair")


def item_name(where: str, index: int, key: str, objects: bool) -> str:
    return f"{where}[{index}].{key}" if objects else f"{where}[{index}]"


def check_text(value: Any, where: str, max_chars: int) -> None:
    if not isinstance(value, str):
        raise Refused(f"{where} must be a string, got {json_type(value)}", "not_a_string")
    if not value.strip():
        raise Refused(f"{where} is empty", "empty_text")
    if len(value) > max_chars:
        raise Refused(f"{where} has {len(value)} characters, over the limit of {max_chars} (--max-chars)",
                      "text_too_long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Refused(f"{where} is not valid Unicode (a lone surrogate at character {e.start})",
                      "not_unicode") from None


def check_words(instances: Instances, tokenizer) -> None:
    """NER tags words: refuse a text of only characters the tokenizer drops (control characters,
    zero-width spaces), which has none (the Predictor would fail the whole batch on it)."""
    where = "inputs" if instances.columnar else "instances"
    for i, text in enumerate(instances.texts):
        if not words_with_offsets(tokenizer, text):
            raise Refused(f"{where}[{i}] has no words (only characters the tokenizer ignores)", "no_words")
