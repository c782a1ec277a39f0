"""One inference interface for every task and backend: texts in, the task's predictions out.

A :class:`Predictor` is a task (which knows how texts become inputs and outputs become rows), a
tokenizer and a backend that maps encoded examples to the model's outputs: the Keras model of a
run directory, an exported ``.tflite`` file run by LiteRT (with its metadata and tokenizer
beside it), or an exported SavedModel's token-id signature; no run directory is needed for the
last two.

    >>> predictor = Predictor.load("runs/sst2")                                 # Keras
    >>> predictor = Predictor.load("runs/sst2/export/model_int8.tflite")        # LiteRT
    >>> predictor.predict(["a gripping, beautifully acted film"])
    [{'text': 'a gripping, beautifully acted film', 'label': 'positive', 'probabilities': {...}}]
    >>> Predictor.load("runs/sst2", precision="auto").precision   # on a CPU with bf16 instructions
    'bfloat16'
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfllm.cli import check_choice
from tfllm.data.pipeline import padded_width
from tfllm.data.tokenization import Encoded
from tfllm.errors import TfllmError
from tfllm.export.saved_model import SavedModelBackend
from tfllm.export.tflite import TFLiteBackend
from tfllm.hardware import bf16_hardware, bf16_refused_by_cap, no_bf16_reason
from tfllm.models.precision import bfloat16_weights_for_inference
from tfllm.runs import Run, load_run
from tfllm.tasks import Task
from tfllm.tasks.base import keras_outputs


PRECISIONS = ("float32", "bfloat16", "auto")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def inference_precision(asked: str, batched: bool = True) -> tuple[str, str]:
    """What a run's Keras model computes in for inference (``float32`` or ``bfloat16``), and why.

    ``bfloat16`` is Keras' ``mixed_bfloat16`` (matrix products in bf16) with every Dense weight
    cast to bf16 once at load (:func:`~tfllm.models.precision.bfloat16_weights_for_inference`).
    ``auto`` picks it on a CPU with bf16 instructions when texts come in batches, float32
    otherwise: on an AVX512-BF16 EPYC the SST-2 MiniLM ran 198 vs 137 sentences/s in sorted groups
    of 16, but one text at a time bf16 gains nothing worth its rounding (78.8 vs 75.2 texts/s with
    the weights cast once; 48 vs 68 when every call cast them). Exported TFLite and SavedModel
    files compute as they were exported."""
    check_choice("precision", asked, PRECISIONS)
    refused = bf16_refused_by_cap() if asked == "bfloat16" else None
    if refused:
        raise TfllmError(f"--precision bfloat16 cannot run: {refused}; use auto or float32")
    if asked != "auto":
        return asked, "asked for"
    instructions = bf16_hardware()
    if not instructions:
        return "float32", f"auto: {no_bf16_reason()}"
    if not batched:
        return "float32", "auto: one text at a time, where bf16 is no faster"
    return "bfloat16", f"auto: the CPU has bf16 instructions ({', '.join(instructions)}) and texts come in batches"


class KerasBackend:
    """A Keras model (the task's wrapper around a trained HF head), batched by length."""

    def __init__(self, model, multiple: int = 8):
        self.model, self.multiple = model, multiple

    def outputs(self, encoded: Encoded, batch_size: int = 64):
        return keras_outputs(self.model, encoded, batch_size, self.multiple)


class Predictor:
    """Inference for one trained model, whatever the task and backend."""

    def __init__(self, task: Task, tokenizer, backend, source: Path, run: Optional[Run] = None,
                 precision: str = "float32"):
        self.task, self.tokenizer, self.backend, self.source, self.run = task, tokenizer, backend, source, run
        self.precision = precision  # what a run's Keras model computes in; "as exported" for exports

    @classmethod
    def load(cls, path: str | Path, num_threads: Optional[int] = None, task_name: Optional[str] = None,
             precision: str = "float32"):
        """A run directory (Keras, computing in ``precision``: ``float32``, ``bfloat16`` or
        ``auto``, see :func:`inference_precision`), an exported ``.tflite`` model (LiteRT) or an
        exported SavedModel directory (``export/saved_model/1``, its token-id signature)."""
        path = Path(path)
        check_choice("precision", precision, PRECISIONS)
        if precision == "bfloat16" and (path.suffix == ".tflite" or (path / "saved_model.pb").is_file()):
            raise TfllmError(f"{path} is an exported model: it computes as it was exported "
                             "(precision bfloat16 applies to a run directory's Keras model)")
        if path.suffix == ".tflite":
            backend, task, tokenizer = TFLiteBackend.load(path, num_threads)
        elif (path / "saved_model.pb").is_file():
            backend, task, tokenizer = SavedModelBackend.load(path)
        else:
            precision = inference_precision(precision)[0]
            predictor = cls.from_run(load_run(path, task_name, POLICIES[precision]), precision=precision)
            if precision == "bfloat16":  # a model loaded for inference: cast its weights once
                bfloat16_weights_for_inference(predictor.backend.model)
            return predictor
        if task_name is not None and task.name != task_name:
            raise TfllmError(f"{path} is a {task.name} model, not {task_name}")
        return cls(task, tokenizer, backend, path, precision="as exported")

    @classmethod
    def from_run(cls, run: Run, model=None, precision: str = "float32") -> "Predictor":
        """A loaded run, predicting with ``model`` (a Keras model) or the run's own (loaded in
        ``precision``)."""
        model = model if model is not None else run.task.wrap_model(run.hf_model)
        return cls(run.task, run.tokenizer, KerasBackend(model, run.cfg.padding_multiple),
                   run.path, run, precision)

    def pad_to(self, multiple: int) -> "Predictor":
        """Pad each forward pass to a multiple of ``multiple`` tokens from now on (Keras and
        SavedModel; TFLite runs each text at its own length); returns the predictor. Fewer distinct
        shapes keep a long-running process's memory bounded: oneDNN keeps state for every shape
        it has run."""
        if hasattr(self.backend, "multiple"):
            self.backend.multiple = multiple
        return self

    def forward_shapes(self, max_batch: int) -> list[tuple[int, int]]:
        """Every ``(batch, width)`` a forward pass of at most ``max_batch`` texts can have: widths
        are multiples of the padding multiple up to ``max_length``. Empty for TFLite, whose
        interpreter keeps no state per shape (it re-plans on every new shape)."""
        multiple = getattr(self.backend, "multiple", None)
        if multiple is None:
            return []
        widths = sorted({padded_width(n, multiple) for n in range(2, self.task.cfg.data.max_length + 1)})
        return [(batch, width) for width in widths for batch in range(1, max_batch + 1)]

    def warm_up_shapes(self, max_batch: int) -> int:
        """Run one dummy forward pass of every shape in :meth:`forward_shapes`; returns how many.

        A long-running server then allocates nothing new: oneDNN creates and keeps its kernels per
        input shape (first run of a shape: up to ~50 ms more; SST-2 MiniLM in bf16, batches up to
        16 at widths 8..72: resident memory +170 MB, then flat)."""
        shapes = self.forward_shapes(max_batch)
        token = self.tokenizer.unk_token_id or 0  # any id: only the shape matters
        for batch, width in shapes:
            ids = np.full(width, token, np.int32)
            self.backend.outputs(Encoded([ids] * batch, [np.zeros(width, np.int32)] * batch), batch)
        return len(shapes)

    @property
    def config(self):
        return self.task.cfg

    @property
    def label_names(self) -> list[str]:
        return list(getattr(self.task, "label_names", None) or [])

    @property
    def pair_task(self) -> bool:
        return self.task.cfg.data.text_pair_column is not None

    def logits(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None, batch_size: int = 64):
        """The model's raw outputs for each input (stacked for sequence tasks, a list of
        per-window arrays for token classification)."""
        return self.backend.outputs(self.task.encode(self.tokenizer, texts, pairs), batch_size)

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                batch_size: int = 64) -> list[dict]:
        """One JSON-ready dict per text (per [MASK] for fill-mask)."""
        return self.predict_encoded(texts, pairs, batch_size)[0]

    def predict_encoded(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                        batch_size: int = 64) -> tuple[list[dict], Encoded]:
        """:meth:`predict`'s rows and the model inputs they came from (the service counts
        truncated texts from them)."""
        encoded = self.task.encode(self.tokenizer, texts, pairs)
        outputs = self.backend.outputs(encoded, batch_size)
        return self.task.rows(texts, pairs, outputs, encoded, self.tokenizer), encoded

    def evaluate(self, data_file: str, out_dir: Path, **columns) -> dict:
        """Score on a labelled file (the task's metrics); reports go to ``out_dir``."""
        return self.task.evaluate_file(self, data_file, Path(out_dir), **columns)
