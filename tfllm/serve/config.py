"""What the service serves and its limits: :class:`Settings` (batching, queue, timeouts, input
limits) and one :class:`ModelSpec` per model, resolved from the command line's run directories.

    >>> specs = model_specs("runs/sst2", ["ner=runs/conll/export/model.tflite"], backend=None)
    >>> [(s.name, s.backend) for s in specs]
    [('sst2', 'keras'), ('ner', 'tflite')]

Every check here is cheap (paths, names, numbers), so a bad argument is one ``error:`` line before
the server binds its port or TensorFlow loads a model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from tfllm import rundir
from tfllm.cli import check_choice
from tfllm.errors import TfllmError
from tfllm.inference import PRECISIONS, Predictor, inference_precision

BACKENDS = ("keras", "tflite", "saved_model")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SAVED_MODEL = Path("export") / "saved_model" / "1"
TFLITE = Path("export") / "model.tflite"
WARM_UPS = ("one", "all")


@dataclass(frozen=True)
class Settings:
    """Server-wide limits (the command line's flags; see ``python -m tfllm.serve --help``)."""
    max_batch_size: int = 32      # texts combined into one batch
    max_latency_ms: float = 5.0   # how long a batch waits for more requests after its first
    max_queue: int = 256          # requests waiting per model before 503
    timeout_ms: float = 10000.0   # a request not answered by then gets 504
    max_instances: int = 64       # texts per request
    max_chars: int = 10000        # characters per text
    max_body_bytes: int = 1_000_000
    forward_batch_size: int = 16  # a batch runs as length-sorted forward passes of at most this many texts
    precision: str = "auto"       # what a run's Keras model computes in (tfllm.inference.inference_precision)
    pad_to_multiple_of: int = 8   # forward passes padded to a multiple of this many tokens: a bounded set of shapes
    warm_up: str = "one"          # before ready: one dummy batch, or "all": every forward-pass shape (memory flat after)
    batch_threads: int = 1        # batches run at once, each in its own thread (TFLite: always 1)

    def check(self) -> "Settings":
        for flag in ("max_batch_size", "max_queue", "max_instances", "max_chars", "max_body_bytes",
                     "forward_batch_size", "pad_to_multiple_of", "batch_threads"):
            if getattr(self, flag) < 1:
                raise TfllmError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(self, flag)}")
        if self.max_latency_ms < 0:
            raise TfllmError(f"--max-latency-ms must be 0 or more, got {self.max_latency_ms:g}")
        if self.timeout_ms <= 0:
            raise TfllmError(f"--timeout-ms must be positive, got {self.timeout_ms:g}")
        check_choice("--precision", self.precision, PRECISIONS)
        check_choice("--warm-up", self.warm_up, WARM_UPS)
        return self

    def keras_precision(self) -> tuple[str, str]:
        """What a run's Keras model computes in, and why (``auto``: bf16 only when batching)."""
        return inference_precision(self.precision, batched=self.max_batch_size > 1)


def check_workers(count: int) -> int:
    """``--workers``: how many processes serve the port (1: this one)."""
    if count < 1:
        raise TfllmError(f"--workers must be at least 1, got {count}")
    return count


@dataclass
class ModelSpec:
    """One model to serve: its URL name, what :meth:`Predictor.load` reads, the backend that
    implies, and the run directory it came from (for the dev set's label shares), if any.

    ``loader`` replaces :meth:`Predictor.load` (an already-loaded or wrapped predictor)."""
    name: str
    path: Path
    backend: str
    run_dir: Optional[Path] = None
    loader: Optional[Callable[[], Predictor]] = field(default=None, repr=False)

    def load(self, precision: str = "float32") -> Predictor:
        """The predictor; a Keras backend computes in ``precision`` (an export as it was exported,
        whatever ``precision`` says)."""
        if self.loader is not None:
            return self.loader()
        return Predictor.load(self.path, precision=precision if self.backend == "keras" else "float32")


def model_specs(run_dir: Optional[str], models: Sequence[str], backend: Optional[str] = None,
                tflite: Optional[str] = None) -> list[ModelSpec]:
    """The models named on the command line: ``RUN_DIR`` (named after its directory) and each
    ``--model NAME=PATH``; ``backend`` / ``tflite`` say how a run directory is served."""
    if backend is not None and backend not in BACKENDS:
        raise TfllmError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if tflite is not None and backend not in (None, "tflite"):
        raise TfllmError(f"--tflite goes with --backend tflite, not --backend {backend}")
    if tflite is not None and run_dir is None:
        raise TfllmError("--tflite FILE needs the run directory it was exported from (RUN_DIR)")
    entries = [] if run_dir is None else [(default_name(run_dir), run_dir, tflite)]
    entries += [split_model_flag(flag) + (None,) for flag in models]
    if not entries:
        raise TfllmError("nothing to serve: give a run directory or --model NAME=PATH")
    specs = [resolve(name, path, backend or ("tflite" if file else None), file)
             for name, path, file in entries]
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TfllmError(f"model name {duplicates[0]!r} is given twice; name them with --model NAME=PATH")
    return specs


def default_name(path: str) -> str:
    """The name of the run directory ``path`` is or sits in (``runs/sst2``,
    ``runs/sst2/export/model.tflite`` -> ``sst2``), else the file's stem."""
    resolved = Path(path).resolve()
    run = find_run_dir(resolved)
    if run is not None:
        return run.resolve().name
    return resolved.stem if resolved.suffix == ".tflite" else resolved.name


def split_model_flag(flag: str) -> tuple[str, str]:
    name, sep, path = flag.partition("=")
    if not sep or not name or not path:
        raise TfllmError(f"--model {flag!r}: give NAME=PATH (e.g. --model sst2=runs/sst2)")
    return name, path


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise TfllmError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64, "
                         "starting with a letter or digit); name it with --model NAME=PATH")
    return name


def resolve(name: str, path: str, backend: Optional[str], tflite: Optional[str] = None) -> ModelSpec:
    """A :class:`ModelSpec` for ``path``: an exported ``.tflite`` / SavedModel directory as it is
    (``backend`` is for run directories), a run directory with ``backend`` (Keras by default)."""
    source = Path(path).resolve()
    if not source.exists():
        raise TfllmError(f"model {name}: {path} not found (give a finished run directory, an "
                         "exported .tflite or an export/saved_model/1 directory)")
    check_name(name)
    found = export_backend(source)
    if found is not None:  # served as what it is, whatever --backend says of run directories
        return ModelSpec(name, source, found, find_run_dir(source))
    if not rundir.is_run(source):
        raise TfllmError(f"model {name}: {path} is not a tfllm run directory (no run_info.json)")
    if not rundir.is_finished(source):
        raise TfllmError(f"model {name}: {path} is not a finished run (no model/ and metrics.json); train it first")
    backend = backend or "keras"
    return ModelSpec(name, export_path(source, backend, tflite), backend, source)


def export_backend(path: Path) -> Optional[str]:
    """``tflite`` / ``saved_model`` for an exported model, None for anything else."""
    if path.is_file() and path.suffix == ".tflite":
        return "tflite"
    if (path / "saved_model.pb").is_file():
        return "saved_model"
    return None


def export_path(run: Path, backend: str, tflite: Optional[str]) -> Path:
    """What to load for a run directory served by ``backend``; a missing export says how to make it."""
    if backend == "keras":
        return run
    if backend == "tflite":
        path = Path(tflite) if tflite else run / TFLITE
        if not path.is_file() and tflite and (run / "export" / tflite).is_file():
            path = run / "export" / tflite
        if not path.is_file() or path.suffix != ".tflite":
            raise TfllmError(f"{path} is not a .tflite file; export one with python -m tfllm.export {run} "
                             "--format tflite, or name it with --tflite FILE")
        return path
    path = run / SAVED_MODEL
    if not (path / "saved_model.pb").is_file():
        raise TfllmError(f"{path} has no SavedModel; export one with python -m tfllm.export {run} "
                         "--format saved_model")
    return path


def find_run_dir(path: Path, levels: int = 4) -> Optional[Path]:
    """The run directory an export sits in (``RUN/export/model.tflite`` -> ``RUN``), if any."""
    for candidate in [path, *path.resolve().parents][:levels]:
        if rundir.is_run(candidate):
            return candidate
    return None
