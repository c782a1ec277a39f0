"""Loading a finished run for inference, evaluation, export and comparison (any task).

    >>> run = load_run("runs/conll2003_minilm")
    >>> run.task.name, run.hf_model.config.num_labels
    ('token_classification', 9)

Every damaged or missing piece is a one-line :class:`TfllmError` naming the file: no model,
a corrupt ``config.yaml`` / ``config.json`` / ``tf_model.h5`` / label map, a head that does not
match the task's labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers

from tfllm import rundir
from tfllm.config import Config, load_config
from tfllm.data.tokenization import load_tokenizer
from tfllm.errors import TfllmError
from tfllm.models.checkpoints import check_bert_config, load_trained
from tfllm.models.masked_lm import masked_lm_class
from tfllm.models.precision import keras_policy
from tfllm.tasks import Task, task_for


@dataclass
class Run:
    """A finished run: its directory, config, task (artifacts loaded), tokenizer and HF model."""
    path: Path
    cfg: Config
    task: Task
    tokenizer: Any
    hf_model: Any


def head_class(task: Task):
    """The transformers class a task's ``model/`` is loaded with."""
    if task.head == "TFBertForMaskedLM":
        return masked_lm_class()
    return getattr(transformers, task.head)


def load_run_config(run_dir: Path) -> Config:
    """A finished run's ``config.yaml`` (checked that the run finished saving its model)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TfllmError(f"run directory not found: {run_dir}")
    if not rundir.has_model(run_dir):
        raise TfllmError(f"{run_dir} is not a finished tfllm run (no model/ inside); train it first")
    if not (run_dir / rundir.CONFIG).is_file():
        raise TfllmError(f"{run_dir} has no config.yaml; is it a tfllm run directory?")
    return load_config(run_dir / rundir.CONFIG)


def load_run(run_dir: str | Path, task_name: str | None = None, policy: str = "float32") -> Run:
    """Load a finished run; ``task_name`` (optional) is the task the caller needs; its model
    computes under the Keras mixed-precision ``policy`` (``float32`` or ``mixed_bfloat16``)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    task = task_for(cfg)
    if task_name is not None and task.name != task_name:
        raise TfllmError(f"{run_dir} is a {task.name} run, not {task_name}")
    task.load_artifacts(run_dir)
    check_bert_config(run_dir / rundir.MODEL)  # before the slow TensorFlow work
    tokenizer = load_tokenizer(run_dir / rundir.MODEL)
    with keras_policy(policy):
        hf_model = load_trained(head_class(task), run_dir / rundir.MODEL)
    task.check_model(hf_model, run_dir)
    return Run(run_dir, cfg, task, tokenizer, hf_model)
