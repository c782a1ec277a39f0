"""The Task: everything that differs between kinds of runs, behind one interface.

A task is a registered class (``train.task`` names it) that owns, for its kind of run:

* its config checks (:meth:`Task.check_config`);
* reading, validating and encoding its data (:meth:`Task.load_data`);
* its Keras model, a :class:`~tfllm.models.base.TaskModel` around a Hugging Face TF head
  (:meth:`Task.build_model`), its metrics and the one to monitor (:attr:`Task.monitor`);
* what a run directory keeps for inference besides ``model/`` (:meth:`Task.save_artifacts`,
  e.g. ``label_map.json``), its final report (:meth:`Task.write_report`);
* how texts become model inputs and outputs become printed predictions (:meth:`Task.encode`,
  :meth:`Task.rows`), the same for the Keras, TFLite and SavedModel backends.

The run lifecycle (:mod:`tfllm.lifecycle`) and the Trainer know no task by name. Adding a task is
one module with a ``@register``-ed subclass, one config and a few lines in the shared test harness.

    >>> task = get_task("classification")(cfg)
    >>> data = task.load_data()
    >>> model, report = task.build_model(data)
"""
from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfllm import rundir
from tfllm.config import Config
from tfllm.data.readers import Examples, read_examples
from tfllm.data.pipeline import BatchPlan, SplitData, pad_batch
from tfllm.data.tokenization import Encoded, encode_texts
from tfllm.errors import TfllmError
from tfllm.training.reporting import batch_bar

TASKS: dict[str, type["Task"]] = {}


def register(cls: type["Task"]) -> type["Task"]:
    """Class decorator: make ``cls`` available as ``train.task: <cls.name>``."""
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type["Task"]:
    """The registered task class called ``name``; an unknown name names the config key."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TfllmError(f"config key train.task: {name!r} is not a task{hint}; "
                         f"tasks: {', '.join(TASKS)}")
    return TASKS[name]


@dataclass
class TaskData:
    """What training needs from the data side: the tokenizer and the two encoded, planned splits.

    Tasks subclass it to keep what their report needs (the raw dev examples, a label map...)."""
    tokenizer: Any
    train: Optional[SplitData]
    dev: SplitData


class Task:
    """Base class of every task; subclasses set the class attributes and override the hooks."""

    name: ClassVar[str] = ""
    head: ClassVar[str] = "TFBertForSequenceClassification"  # transformers class of model/
    # after mixed-precision training, score the saved weights in float32 for the final dev report
    # (tfllm.lifecycle.final_eval_in_float32)
    final_eval_in_float32: ClassVar[bool] = True
    monitor: ClassVar[str] = "loss"                            # dev metric for best / early stop
    higher_is_better: ClassVar[bool] = False
    supports_compression: ClassVar[bool] = False               # pruning / QAT / distillation

    def __init__(self, cfg: Config):
        self.cfg = cfg

    # --- training ----------------------------------------------------------------------------
    def check_config(self) -> None:
        """Task-specific config checks, before anything is read or written."""

    def load_data(self, resume: bool = False) -> TaskData:
        raise NotImplementedError

    def build_model(self, data: TaskData):
        """``(TaskModel, LoadReport)``; called inside the strategy's scope."""
        raise NotImplementedError

    def save_artifacts(self, run_dir: Path, data: TaskData) -> None:
        """Files inference needs besides ``model/`` (label map, thresholds...)."""

    def final_outputs(self, model, data: TaskData, trainer) -> Any:
        """The trained model's dev outputs, computed before compression wrappers are stripped
        (so a QAT run is scored as its fake-quantised model, which is what it exports)."""
        return self.outputs_of(model, data.tokenizer, data.dev.encoded)

    def write_report(self, run_dir: Path, data: TaskData, outputs: Any) -> dict:
        """Write ``eval/dev`` and print the final report; returns the final dev metrics."""
        raise NotImplementedError

    def summary_extras(self, data: TaskData) -> dict:
        """More keys for ``metrics.json`` (e.g. the corpus statistics of a masked-LM run)."""
        return {}

    # --- inference ---------------------------------------------------------------------------
    def load_artifacts(self, run_dir: Path) -> None:
        """Read back what :meth:`save_artifacts` wrote (a damaged file names itself)."""

    def artifacts(self) -> dict:
        """What an exported model's metadata carries for this task (labels, thresholds...)."""
        return {}

    def restore_artifacts(self, values: dict) -> None:
        """Inverse of :meth:`artifacts`, for an exported model without its run directory."""

    def check_model(self, hf_model, where: Path) -> None:
        """Refuse a trained model whose head does not match the artifacts (its label count)."""
        names = getattr(self, "label_names", None)
        if names is not None and len(names) != hf_model.config.num_labels:
            raise TfllmError(f"{where / rundir.LABEL_MAP}: {len(names)} labels, but the model in "
                             f"{where / rundir.MODEL} predicts {hf_model.config.num_labels}")

    def wrap_model(self, hf_model):
        """A Keras model around a trained Hugging Face head, whose ``call`` gives the outputs."""
        raise NotImplementedError

    def encode(self, tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> Encoded:
        """Model inputs for raw texts (one example per text, or several windows per text)."""
        return encode_texts(tokenizer, texts, pairs, self.cfg.data.max_length)

    def rows(self, texts: Sequence[str], pairs: Optional[Sequence[str]], outputs, encoded: Encoded,
             tokenizer) -> list[dict]:
        """One JSON-ready dict per text from the model's outputs (``predict`` prints them)."""
        raise NotImplementedError

    def serving_outputs(self, logits) -> dict:
        """The SavedModel signature's outputs computed in-graph from the head's float32 logits."""
        return {"logits": logits}

    def evaluate_file(self, predictor, data_file: str, out_dir: Path, **columns) -> dict:
        """Score ``predictor`` on a labelled file; writes reports under ``out_dir``."""
        raise NotImplementedError

    def read_labelled(self, data_file: str, **columns) -> Examples:
        """A labelled table file, read with the run's columns unless ``columns`` overrides them."""
        d = self.cfg.data
        get = lambda key: columns.get(key) or getattr(d, key)  # noqa: E731
        return read_examples(data_file, get("text_column"), get("text_pair_column"), get("label_column"),
                             get("format"), d.has_header, d.column_names)

    def outputs_of(self, model, tokenizer, encoded: Encoded, batch_size: Optional[int] = None):
        """Per-example outputs of a Keras ``model`` (see :func:`keras_outputs`)."""
        return keras_outputs(model, encoded, batch_size or self.cfg.train.eval_batch_size,
                             self.cfg.padding_multiple)


_INFERENCE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {feature names: tf.function}


def keras_outputs(model, encoded: Encoded, batch_size: int = 64, multiple: int = 8):
    """``model``'s outputs for every example, in input order, batches sorted by length.

    Sequence-level outputs come back stacked ``[n, ...]``; per-token outputs (rank 3) as a list
    with one ``[length, ...]`` array per example (padding cut off). Batches are padded in NumPy
    and run through :func:`inference_function` (a graph, not eager Keras: a one-text request
    costs milliseconds, not the ~100 ms of eager layer calls and a tf.data pipeline)."""
    def forward(features: dict) -> np.ndarray:
        return np.asarray(inference_function(model, features)({k: tf.constant(v) for k, v in features.items()}))

    return sorted_batch_outputs(forward, encoded, batch_size, multiple)


def sorted_batch_outputs(forward, encoded: Encoded, batch_size: int, multiple: int):
    """``forward(features) -> [b, ...] array`` over every example in length-sorted batches of
    ``batch_size``, each padded to a multiple of ``multiple``; per-example outputs in input order
    (per-token ones cut to each example's length), as :func:`per_example` returns them."""
    batches = BatchPlan(encoded.lengths, batch_size, shuffle=False, bucketing=True).epoch(0)
    outputs: list = [None] * len(encoded)
    bar = batch_bar(len(batches))
    for number, indices in enumerate(batches, start=1):
        batch = forward(pad_batch(encoded, indices, multiple)[0])
        for row, i in zip(batch, indices):
            outputs[i] = row[:len(encoded.input_ids[i])] if batch.ndim == 3 else row
        if bar is not None:
            bar.update(number)
    return per_example(outputs)


def inference_function(model, features: dict):
    """``model(features, training=False)`` as a ``tf.function`` traced once for every batch size and
    length (its input signature leaves both dimensions open), made once per model and set of
    feature names. Letting TensorFlow discover the shapes instead traces the model again on the
    second and third new shapes, seconds each: 872 SST-2 sentences at batch 64 ran at 95
    sentences/s on a first call after a warm-up, 216 once traced."""
    key = tuple(sorted((name, np.asarray(value).dtype.name, np.ndim(value)) for name, value in features.items()))
    per_model = _INFERENCE.setdefault(model, {})  # beside the model, not on it: Keras would track it
    if key not in per_model:
        spec = {name: tf.TensorSpec([None] * ndim, dtype, name=name) for name, dtype, ndim in key}
        per_model[key] = tf.function(lambda inputs: model(inputs, training=False), input_signature=[spec])
    return per_model[key]


def per_example(outputs: list):
    """Per-example outputs as every backend returns them: stacked ``[n, ...]`` for sequence-level
    outputs, the list of ``[length, ...]`` arrays for per-token ones."""
    if outputs and outputs[0].ndim == 1:
        return np.stack(outputs)
    return outputs


def split_pairs(texts: Sequence[str], pair_task: bool) -> tuple[list[str], Optional[list[str]]]:
    """``predict``'s texts: for a pair task each is ``first<TAB>second`` (one line each)."""
    if not pair_task:
        return list(texts), None
    split = [text.split("\t", 1) for text in texts]
    for i, parts in enumerate(split, start=1):
        if len(parts) != 2 or not parts[1].strip():
            raise TfllmError(f"text {i}: this run takes sentence pairs; give 'first<TAB>second'")
    return [p[0] for p in split], [p[1] for p in split]


def plan_splits(cfg: Config, train: Optional[Encoded], dev: Encoded, train_map=None, dev_map=None):
    """``(train SplitData, dev SplitData)``: the train split shuffled and bucketed by the seed,
    the dev split in order (bucketed by length)."""
    data, seed = cfg.data, cfg.train.seed
    train_split = None if train is None else SplitData(
        train, BatchPlan(train.lengths, cfg.train.batch_size, seed, True, data.bucketing,
                         data.bucket_window), train_map)
    dev_split = SplitData(dev, BatchPlan(dev.lengths, cfg.train.eval_batch_size, shuffle=False,
                                         bucketing=data.bucketing), dev_map)
    return train_split, dev_split
