"""The run directory: its file names, what makes a folder a tfllm run, and how a run claims one.

A run directory (``runs/<name>/`` or ``output_dir``) holds::

    config.yaml      the resolved config (local paths absolute)
    run_info.json    versions, seed, precision, command: the marker of a folder tfllm made
    label_map.json   classification runs
    checkpoints/     ckpt-N.* (weights, optimizer, dropout RNG and the TrainState), best/
    tensorboard/     train/ and dev/ event files
    model/           the final save_pretrained checkpoint with its tokenizer
    eval/  metrics.json   reports; metrics.json is written last: its presence means "finished"

tfllm only ever deletes a folder it made: ``--overwrite`` replaces a run directory (one holding
a valid ``run_info.json``) or an empty folder, never the current directory, one of its
ancestors, the home directory or ``/``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tfllm.errors import TfllmError

CONFIG = "config.yaml"
RUN_INFO = "run_info.json"
LABEL_MAP = "label_map.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
MODEL = "model"
EVAL = "eval"
METRICS = "metrics.json"


def is_run(path: Path) -> bool:
    """True if ``path`` holds tfllm's marker: a ``run_info.json`` that tfllm wrote."""
    try:
        info = json.loads((Path(path) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(info, dict) and "tfllm" in info.get("versions", {})


def has_model(path: Path) -> bool:
    """True once a run saved its final ``model/`` (what inference, export and compare need)."""
    return (Path(path) / MODEL / "config.json").is_file()


def is_finished(path: Path) -> bool:
    """True once a run saved its model and wrote ``metrics.json`` (the last file of a run)."""
    return (Path(path) / METRICS).is_file() and has_model(path)


def protected_reason(path: Path) -> str | None:
    """Why ``path`` may never be deleted by tfllm, or None."""
    target = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "it is the filesystem root"
    if target == Path.home().resolve():
        return "it is the home directory"
    if target == cwd:
        return "it is the current directory"
    if target in cwd.parents:
        return "it contains the current directory"
    return None


def check_claim(run_dir: Path, overwrite: bool = False, resume: bool = False) -> bool:
    """Whether a run may use ``run_dir``; True if an old run there must be replaced first.

    * missing or empty: used as it is;
    * ``resume``: must be a tfllm run (or empty); nothing is removed;
    * otherwise a non-empty folder needs ``overwrite``, and is replaced only if it is a tfllm
      run and not a protected folder (see :func:`protected_reason`).

    Every refusal is a :class:`TfllmError` naming the folder. Nothing is touched here, so runs
    call it before any slow work, and :func:`claim` once they are ready to write.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TfllmError(f"config key output_dir: {run_dir} exists and is not a directory")
    if not (run_dir.is_dir() and any(run_dir.iterdir())):
        return False
    if resume:
        if not is_run(run_dir):
            raise TfllmError(f"--resume: {run_dir} is not a tfllm run directory (no valid "
                             f"{RUN_INFO}); --resume continues runs that tfllm started")
        return False
    if not is_run(run_dir):
        raise TfllmError(f"output_dir {run_dir} holds files tfllm did not create (no valid "
                         f"{RUN_INFO}); tfllm never deletes them, even with --overwrite: "
                         "choose another output_dir")
    if not overwrite:
        raise TfllmError(f"run directory {run_dir} already exists; pass --overwrite to replace "
                         "it or --resume to continue it")
    reason = protected_reason(run_dir)
    if reason:
        raise TfllmError(f"--overwrite: refusing to delete {run_dir}: {reason}")
    return True


def claim(run_dir: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Make ``run_dir`` ready for a run (checked by :func:`check_claim`, old run replaced)."""
    run_dir = Path(run_dir)
    if check_claim(run_dir, overwrite, resume):
        remove_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def remove_run(run_dir: Path) -> None:
    """Delete a run directory: first renamed aside (one atomic step), then removed."""
    run_dir = Path(run_dir)
    aside = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.", suffix=".deleted"))
    os.replace(run_dir, aside / run_dir.name)
    shutil.rmtree(aside)


def check_run_name(name: str) -> None:
    """``name`` must be one plain folder name under ``runs/`` (not ``.``, ``..`` or a path)."""
    clean = name.strip()
    if clean in ("", ".", "..") or "/" in clean or "\\" in clean or os.sep in clean:
        raise TfllmError(f"config key name: {name!r} must be a plain folder name under runs/ "
                         "(use output_dir for any other place)")
