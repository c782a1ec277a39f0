"""TFLite export of a run (float32, dynamic-range, float16, full int8, QAT int8) and a LiteRT runner.

The model is traced from a ``tf.function`` with an explicit input signature, dynamic batch and
sequence length (``[None, None]`` int32 ``input_ids`` / ``attention_mask`` / ``token_type_ids``,
output ``logits``; batch 1 for a CRF tagger, whose decoding converts only with a static batch),
and converted with built-in ops only (no Flex: the pip LiteRT runtime has no Flex delegate). An
app tokenizes one text with the exported ``vocab.txt`` (no padding needed: resize the three
inputs to ``[1, n]``, the text's length, at most ``max_length``), sets them and invokes; texts may
also go together padded to the longest with ``attention_mask`` 0 (``TFLiteBackend.batch_texts``).
The metadata JSON beside each model names the tensors and everything else.
The graph is frozen directly (``experimental_lower_to_saved_model=False``): ~10x faster to
convert than through a temporary SavedModel, same ops, but no signature table.

    >>> path = export_tflite("runs/sst2", "int8")            # runs/sst2/export/model_int8.tflite
    >>> Predictor.load(path).predict(["a gripping film"])      # tfllm.inference, LiteRT backend

Any task whose head returns ``logits`` exports the same way: ``[1, labels]`` for sequence tasks,
``[1, n, tags]`` for token classification; the metadata names the task and its artifacts.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import os
import re
import weakref
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import convert as tflite_convert

from tfllm import io, rundir
from tfllm.compression import read_compression
from tfllm.compression.ptq import calibration_features
from tfllm.config import Config, from_dict
from tfllm.data.readers import read_json
from tfllm.data.tokenization import Encoded, load_tokenizer
from tfllm.errors import TfllmError, first_line
from tfllm.models.checkpoints import load_trained
from tfllm.runs import Run, head_class, load_run
from tfllm.tasks import task_for
from tfllm.tasks.base import per_example, sorted_batch_outputs

log = logging.getLogger("tfllm")

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
MODES = ("none", "dynamic", "float16", "int8", "qat")


def io_details(interpreter) -> tuple[dict, dict]:
    """``({input name: details}, output details)``: inputs matched by name (``input_ids`` ...)."""
    inputs = {}
    for detail in interpreter.get_input_details():
        for name in INPUT_NAMES:
            if detail["name"] == name or detail["name"].endswith(f"_{name}:0") or detail["name"] == f"{name}:0":
                inputs[name] = detail
    missing = [n for n in INPUT_NAMES if n not in inputs]
    outputs = interpreter.get_output_details()
    if missing or len(outputs) != 1:
        raise TfllmError(f"not a tfllm classifier model: inputs {[d['name'] for d in interpreter.get_input_details()]}, "
                         f"{len(outputs)} outputs")
    return inputs, outputs[0]


def model_filename(mode: str) -> str:
    return "model.tflite" if mode == "none" else f"model_{mode}.tflite"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        close = difflib.get_close_matches(mode, MODES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TfllmError(f"unknown --quantize {mode!r}{hint}; choose from {', '.join(MODES)}")
    return mode


def export_batch(hf_model) -> Optional[int]:
    """The exported batch dimension: any (None), or 1 for a CRF tagger (its decoding's scans
    convert to TFLite built-ins only with a static batch, see :mod:`tfllm.models.crf`)."""
    return 1 if getattr(hf_model, "crf", None) is not None else None


def serving_function(hf_model):
    """``f(input_ids, attention_mask, token_type_ids) -> {"logits"}`` at any length and (but for
    a CRF tagger) any batch size."""
    spec = [tf.TensorSpec([export_batch(hf_model), None], tf.int32, name=name) for name in INPUT_NAMES]

    @tf.function(input_signature=spec, autograph=False)  # plain TF ops: no AutoGraph conversion
    def serve(input_ids, attention_mask, token_type_ids):
        logits = hf_model({"input_ids": input_ids, "attention_mask": attention_mask,
                           "token_type_ids": token_type_ids}, training=False).logits
        return {"logits": tf.cast(logits, tf.float32)}

    return serve


_TRACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def concrete_serving(hf_model):
    """The traced serving function of ``hf_model``, traced once per model (tracing BERT is slow)."""
    traced = _TRACED.get(hf_model)
    if traced is None:
        traced = _TRACED[hf_model] = serving_function(hf_model).get_concrete_function()
    return traced


# TFLite ops of each op group that int8 export can leave in float (compression.int8.float_ops)
# ("elementwise": LayerNorm's scale and shift, the residual additions and the attention-mask add;
# TFLite's selective quantisation goes by op type, so they go together.)
FLOAT_OP_GROUPS = {"layer_norm": ["MEAN", "SQUARED_DIFFERENCE", "RSQRT"], "elementwise": ["ADD", "MUL", "SUB"],
                   "softmax": ["SOFTMAX"], "gelu": ["GELU"], "position_embeddings": []}
# "position_embeddings" is by node, not op type: the position and token-type lookups (GATHERs of
# small tables) stay float, the word-embedding GATHER stays int8. The position table's int8 scale
# is the coarsest in the graph and it is added to every token: float costs 0.6 MB, saves ~0.6 points.


def convert(hf_model, mode: str, representative: Optional[list] = None,
            output_type: str = "float32", float_ops: Sequence[str] = ()) -> bytes:
    """The TFLite flatbuffer of ``hf_model`` (for ``qat`` a model with fake-quant wrappers).

    int8 quantises weights and activations with ranges calibrated on ``representative``. With
    ``float_ops`` (groups of :data:`FLOAT_OP_GROUPS`) those ops stay float32 and the converter
    puts quantize/dequantize around them (TFLite's selective quantisation). Without, the model
    is full-integer (``TFLITE_BUILTINS_INT8``); if an op has no int8 kernel the conversion is
    retried with float fallback for it, with a warning.
    """
    if mode == "int8" and float_ops:
        return _convert_selective(hf_model, representative, output_type, float_ops)
    try:
        return _convert(hf_model, mode, representative, output_type, strict_int8=True)
    except TfllmError as e:
        if mode != "int8":
            raise
        log.warning("full-integer conversion failed (%s); retrying with float fallback", e)
        return _convert(hf_model, mode, representative, output_type, strict_int8=False)


def _convert_selective(hf_model, representative, output_type, float_ops) -> bytes:
    """int8 with ``float_ops`` left float: calibrate, then quantise with those ops denylisted.

    This is the route of TF's documented selective quantisation (``QuantizationDebugger`` with
    ``denylisted_ops``), called directly so that it also honours the output type and skips the
    debugger's instrumented model. ``mlir_quantize`` is TF-internal: TF is pinned to a minor.
    """
    unknown = sorted(set(float_ops) - set(FLOAT_OP_GROUPS))
    if unknown:
        raise TfllmError(f"config key compression.int8.float_ops: unknown {unknown} "
                         f"(choose from {', '.join(FLOAT_OP_GROUPS)})")
    converter = _converter(hf_model, "int8", representative, output_type, strict_int8=False)
    converter.experimental_new_quantizer = True
    converter._experimental_calibrate_only = True
    try:
        calibrated = converter.convert()
        nodes = small_table_lookups(calibrated, hf_model.config.vocab_size) if "position_embeddings" in float_ops else []
        return tflite_convert.mlir_quantize(
            calibrated, disable_per_channel=converter._experimental_disable_per_channel,
            input_data_type=tf.float32, output_data_type=tf.int8 if output_type == "int8" else tf.float32,
            denylisted_ops=[op for group in float_ops for op in FLOAT_OP_GROUPS[group]],
            denylisted_nodes=nodes)
    except Exception as e:  # as in _convert: the converter's errors come with long logs
        raise TfllmError(f"TFLite conversion (int8, float {', '.join(float_ops)}) failed: "
                         f"{first_line(e, None)}") from None


def small_table_lookups(flatbuffer: bytes, vocab_size: int) -> list[str]:
    """Output names of the embedding lookups other than the word embeddings (position and
    token-type tables: float GATHERs of a constant whose first dimension is not the vocabulary)."""
    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    names = []
    for op in interpreter._get_ops_details():
        if op["op_name"] != "GATHER":
            continue
        table = tensors[op["inputs"][0]]
        if table["dtype"] == np.float32 and len(table["shape"]) == 2 and table["shape"][0] != vocab_size:
            names.append(tensors[op["outputs"][0]]["name"])
    return names


def _convert(hf_model, mode, representative, output_type, strict_int8) -> bytes:
    converter = _converter(hf_model, mode, representative, output_type, strict_int8)
    try:
        return converter.convert()
    except Exception as e:  # the converter raises ConverterError / ValueError with long logs
        raise TfllmError(f"TFLite conversion ({mode}) failed: {first_line(e, None)}") from None


def _converter(hf_model, mode, representative, output_type, strict_int8):
    check_mode(mode)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_serving(hf_model)], hf_model)
    converter.experimental_lower_to_saved_model = False  # freeze directly: ~10x faster conversion
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode in ("int8", "qat"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "int8":
            if not representative:
                raise TfllmError("int8 export needs a representative data set (calibration examples)")
            converter.representative_dataset = lambda: ([r[n] for n in INPUT_NAMES] for r in representative)
            converter.target_spec.supported_ops = (
                [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] if strict_int8
                else [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS])
        # qat: the converter finds the FakeQuant ops and uses their learned ranges (no calibration);
        # ops without ranges (LayerNorm, softmax itself, the residual additions) stay float.
        if output_type == "int8" and mode == "int8":
            converter.inference_output_type = tf.int8
    return converter


def qat_model(run_dir: Path, hf_model):
    """Re-create the run's QAT wrappers on ``hf_model`` with the learned ranges."""
    info = read_compression(run_dir).get("qat")
    if not info:
        raise TfllmError(f"--quantize qat needs a run trained with compression.qat.enabled=true; "
                         f"{run_dir} has no QAT ranges (use --quantize int8 for post-training int8)")
    from tfllm.compression import qat  # TF-MOT: seconds to import, needed by this export only

    qat.rewrap(hf_model, info["layers"], info["ranges"])
    qat.fake_quantize_embeddings(hf_model)
    return hf_model


def export_tflite(run: Run | str | Path, mode: str = "none", out_dir: Optional[str | Path] = None,
                  calibration_data: Optional[str] = None) -> Path:
    """Write ``model[_mode].tflite``, its metadata JSON and the tokenizer files; returns the model path."""
    check_mode(mode)
    run = run if isinstance(run, Run) else load_run(run)
    cfg, tokenizer, model = run.cfg, run.tokenizer, run.hf_model
    out_dir = Path(out_dir) if out_dir else run.path / "export"
    representative = None
    if mode == "int8":
        representative = calibration_features(cfg, tokenizer, cfg.compression.int8.calibration_examples,
                                               calibration_data)
    if mode == "qat":  # a fresh copy: never wrap the caller's model in place
        model = qat_model(run.path, load_trained(head_class(run.task), run.path / rundir.MODEL))
    int8 = cfg.compression.int8
    output_type = int8.output_type if mode == "int8" else "float32"
    float_ops = list(int8.float_ops) if mode == "int8" else []
    log.info("converting %s to TFLite (%s%s)", run.path, mode,
             f", float32 {' / '.join(float_ops)}" if float_ops else "")
    flatbuffer = convert(model, mode, representative, output_type, float_ops)
    path = out_dir / model_filename(mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each file is replaced atomically; the metadata, written last, names the model's hash, so
    # a model file and metadata from two different (interrupted) exports are never paired.
    save_tokenizer(tokenizer, out_dir)
    io.write_bytes(path, flatbuffer)
    io.write_json(path.with_suffix(".json"), metadata(path, mode, run))
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def save_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer files into ``folder``, each replaced atomically. The Rust ``tokenizers``
    library reports a full disk as a bare ``Exception("... (os error 28)")``: that becomes an
    ``OSError`` naming ``folder``."""
    try:
        io.replace_files(folder, lambda tmp: tokenizer.save_pretrained(str(tmp)))
    except Exception as e:
        code = re.search(r"\(os error (\d+)\)$", str(e))
        if isinstance(e, OSError) or code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(folder)) from None


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(path: Path, meta: dict) -> None:
    """The model file must be the one its metadata describes (not a damaged or mixed export)."""
    if "sha256" in meta and meta["sha256"] != file_digest(path):
        raise TfllmError(f"{path} does not match its metadata {path.with_suffix('.json').name} "
                         "(damaged, or an interrupted export): export it again")


def task_metadata(run: Run) -> dict:
    """What any exported model carries about its run: the task and its artifacts (labels,
    thresholds, tags, CRF...), the max length and the run's resolved config."""
    cfg = run.cfg
    return {"task": run.task.name, **run.task.artifacts(), "max_length": int(cfg.data.max_length),
            "pair_task": cfg.data.text_pair_column is not None, "config": cfg.to_dict(),
            "source_run": str(run.path)}


def task_from_metadata(meta: dict, source: Path):
    """The task an exported model's metadata describes, its artifacts restored."""
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise TfllmError(f"{source}: no run config inside; export the run again")
    task = task_for(from_dict(Config, meta["config"], where=""))
    task.restore_artifacts(meta)
    return task


def metadata(path: Path, mode: str, run: Run) -> dict:
    """What an app needs besides the model: the task (see :func:`task_metadata`), input names
    and dtypes, the output's quantization, the tokenizer."""
    tokenizer = run.tokenizer
    interpreter = make_interpreter(path)
    inputs, logits = io_details(interpreter)
    scale, zero_point = logits.get("quantization", (0.0, 0))
    return {
        "format": "tflite", "file": path.name, "sha256": file_digest(path), "quantize": mode,
        "float_ops": list(run.cfg.compression.int8.float_ops) if mode == "int8" else None,
        "input_tensors": {name: inputs[name]["name"] for name in INPUT_NAMES},
        "output_tensor": logits["name"],
        "inputs": list(INPUT_NAMES), "input_shape": [int(inputs["input_ids"]["shape_signature"][0]), -1],
        "input_dtypes": {name: np.dtype(inputs[name]["dtype"]).name for name in INPUT_NAMES},
        "output": "logits", "output_dtype": np.dtype(logits["dtype"]).name,
        "output_quantization": ({"scale": float(scale), "zero_point": int(zero_point)}
                                if np.dtype(logits["dtype"]).kind in "iu" else None),
        "tokenizer": {"vocab": "vocab.txt", "do_lower_case": bool(getattr(tokenizer, "do_lower_case", True)),
                      "cls_token": tokenizer.cls_token, "sep_token": tokenizer.sep_token,
                      "unk_token": tokenizer.unk_token, "pad_token": tokenizer.pad_token},
        "usage": "tokenize one text (WordPiece, [CLS] text [SEP], truncate to max_length), resize "
                 "the three int32 inputs to [1, n], set them, invoke (where input_shape's batch is "
                 "-1, texts may also go together: [b, n], padded with attention_mask 0); the "
                 "task's outputs follow "
                 "from logits (softmax for classification, sigmoid for multi_label, per token for "
                 "token_classification)",
        **task_metadata(run),
    }


def make_interpreter(path: str | Path, num_threads: Optional[int] = None):
    try:
        return Interpreter(model_path=str(path), num_threads=num_threads)
    except (ValueError, RuntimeError) as e:
        raise TfllmError(f"{path}: not a loadable TFLite model ({str(e).splitlines()[0]})") from None


class TFLiteBackend:
    """An exported ``.tflite`` model run by the LiteRT interpreter; the task and tokenizer come from
    the files beside it.

    ``outputs(encoded, batch_size)`` runs each text alone at its own length (no padding, as on a
    phone). With ``batch_texts`` set (and a model exported with a dynamic batch), texts sorted by
    length go ``batch_size`` at a time instead, padded to their longest; int8 logits then differ
    slightly from one-at-a-time (activation ranges are shared across the batch). Off by default:
    on the AVX512 EPYC the int8 MiniLM ran 0.82x the sentences/s of one-at-a-time in sorted groups
    of 16 (``benchmarks/batch_gain.py`` in benchmarks/results/serve-tflite-groups.md): every new ``[b, n]``
    shape makes XNNPACK plan again, which costs what batching saves."""

    batch_texts = False

    def __init__(self, path: Path, meta: dict, num_threads: Optional[int] = None):
        self.path, self.meta = Path(path), meta
        self.max_length = int(meta["max_length"])
        self.interpreter = make_interpreter(path, num_threads)
        self.inputs, self.output = io_details(self.interpreter)
        self.batched = int(self.inputs["input_ids"]["shape_signature"][0]) == -1  # exports before: batch 1
        self.shape = None
        quant = meta.get("output_quantization")
        self.scale, self.zero_point = (quant["scale"], quant["zero_point"]) if quant else (None, None)

    @property
    def groups_texts(self) -> bool:
        """Whether :meth:`outputs` pads texts into groups (``batch_texts`` set, dynamic-batch export)
        rather than running each text alone."""
        return self.batch_texts and self.batched

    @classmethod
    def load(cls, path: str | Path, num_threads: Optional[int] = None):
        """``(backend, task, tokenizer)`` of an exported model; its metadata must match it."""
        path = Path(path)
        if not path.is_file():
            raise TfllmError(f"TFLite model not found: {path}")
        meta_file = path.with_suffix(".json")
        if not meta_file.is_file():
            raise TfllmError(f"{path}: its metadata {meta_file.name} is missing (export with "
                             "python -m tfllm.export)")
        meta = read_json(meta_file)
        check_digest(path, meta)
        task = task_from_metadata(meta, meta_file)
        return cls(path, meta, num_threads), task, load_tokenizer(path.parent)

    def run(self, features: dict) -> np.ndarray:
        """Float outputs of one example given as int32 ``[1, n]`` arrays (batch axis dropped)."""
        length = int(np.shape(features["input_ids"])[-1])
        return self.invoke({name: np.asarray(features[name], dtype=np.int32).reshape(1, length)
                            for name in INPUT_NAMES})[0]

    def invoke(self, feed: dict) -> np.ndarray:
        """Float outputs of int32 ``[b, n]`` inputs; tensors are re-allocated only when the shape
        changes."""
        shape = feed["input_ids"].shape
        if shape[1] > self.max_length:
            raise TfllmError(f"sequence of {shape[1]} tokens is longer than the exported max length "
                             f"{self.max_length} of {self.path.name}")
        if shape[1] < 1:
            raise TfllmError("empty input: a sequence needs at least one token")
        if self.shape != shape:
            for name in INPUT_NAMES:
                self.interpreter.resize_tensor_input(self.inputs[name]["index"], list(shape))
            self.interpreter.allocate_tensors()
            self.shape = shape
        for name in INPUT_NAMES:
            self.interpreter.set_tensor(self.inputs[name]["index"], feed[name])
        self.interpreter.invoke()
        outputs = self.interpreter.get_tensor(self.output["index"])
        if self.scale is not None:
            outputs = (outputs.astype(np.float32) - self.zero_point) * self.scale
        return outputs.astype(np.float32)

    def outputs(self, encoded: Encoded, batch_size: int = 1):
        """Per-example outputs in input order, as :func:`tfllm.tasks.base.keras_outputs` returns
        them. Examples run shortest first: the interpreter re-allocates its tensors whenever the
        shape changes, so equal shapes run back to back."""
        if self.groups_texts and batch_size > 1:  # padded to each group's longest
            return sorted_batch_outputs(self.invoke, encoded, batch_size, multiple=1)
        outputs: list = [None] * len(encoded)
        for i in np.argsort(encoded.lengths, kind="stable"):
            outputs[i] = self.run(example_features(encoded, i))
        return per_example(outputs)


def example_features(encoded: Encoded, i: int) -> dict:
    """Example ``i`` as the exported model takes it: int32 ``[1, n]`` arrays."""
    ids = np.asarray(encoded.input_ids[i], np.int32)[None]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.asarray(encoded.token_type_ids[i], np.int32)[None]}
