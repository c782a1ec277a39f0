"""The service behind the routes: its models, their loading and warm-up, readiness and shutdown.

Loading runs in the background once the server is up, so ``/healthz`` answers at once and
``/readyz`` turns 200 when every model is loaded and has run a dummy batch. A model that fails to
load stops the server (``on_fatal``), and the command line reports the error.

    >>> service = Service([ModelSpec("sst2", Path("runs/sst2"), "keras", Path("runs/sst2"))], Settings())
    >>> app = create_app(service)     # tfllm.serve.app; the app's lifespan calls start() / stop()
"""
from __future__ import annotations

import asyncio
import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tfllm import rundir
from tfllm.errors import TfllmError
from tfllm.inference import Predictor
from tfllm.serve.batcher import LABEL_TASKS, Batcher
from tfllm.serve.config import ModelSpec, Settings
from tfllm.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)
SERVABLE = ("classification", "regression", "multi_label", "token_classification")
LOADING, AVAILABLE, FAILED, UNLOADING = "LOADING", "AVAILABLE", "FAILED", "UNLOADING"


@dataclass(eq=False)
class ServedModel:
    """One model: its spec, and once loaded its predictor and batcher."""
    spec: ModelSpec
    state: str = LOADING
    predictor: Optional[Predictor] = None
    batcher: Optional[Batcher] = None
    error: str = ""

    @property
    def name(self) -> str:
        return self.spec.name


class Service:
    """The models and their lifecycle; the app's handlers read it."""

    def __init__(self, specs: Sequence[ModelSpec], settings: Settings, metrics: Optional[ServeMetrics] = None,
                 on_fatal: Optional[Callable[[], None]] = None):
        self.models = {spec.name: ServedModel(spec) for spec in specs}
        self.settings = settings.check()
        self.metrics = metrics or ServeMetrics()
        self.on_fatal = on_fatal
        self.ready = False
        self.stopping = False
        self.failure: Optional[BaseException] = None  # why loading failed (the CLI re-raises it)
        self.loader: Optional[asyncio.Task] = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Begin loading every model in the background."""
        self.loader = asyncio.create_task(self.load_all(), name="tfllm-serve-loader")

    async def stop(self) -> None:
        """Readiness off, queued requests answered, batchers ended."""
        self.stopping, self.ready = True, False
        self.metrics.ready.set(0)
        if self.loader is not None and not self.loader.done():
            self.loader.cancel()
        for model in self.models.values():
            model.state = UNLOADING if model.state == AVAILABLE else model.state
            if model.batcher is not None:
                await model.batcher.stop()
        log.info("stopped: every queued request answered")

    async def load_all(self) -> None:
        for model in self.models.values():
            try:
                await self.load(model)
            except Exception as error:  # noqa: BLE001 - reported by the command line
                self.fail(model, error)
                return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %s", ", ".join(self.models))

    async def load(self, model: ServedModel) -> None:
        """Load, check, warm up and start one model's batcher."""
        spec, s, start = model.spec, self.settings, time.perf_counter()
        precision, why = s.keras_precision() if spec.backend == "keras" else ("as exported", spec.backend)
        log.info("loading model %s (%s, %s; computing in %s: %s)", spec.name, spec.backend, spec.path, precision, why)
        predictor = await asyncio.to_thread(spec.load, precision)
        check_servable(predictor, spec)
        predictor.pad_to(s.pad_to_multiple_of)
        threads = 1 if spec.backend == "tflite" else s.batch_threads  # one interpreter: not thread-safe
        batcher = Batcher(spec.name, predictor, self.metrics, s.max_batch_size, s.max_latency_ms / 1000,
                          s.max_queue, s.timeout_ms / 1000, s.forward_batch_size, threads)
        await batcher.warm_up(every_shape=s.warm_up == "all")
        batcher.start()
        model.predictor, model.batcher, model.state = predictor, batcher, AVAILABLE
        seconds = time.perf_counter() - start
        self.describe(model, seconds)
        log.info("model %s: %s, loaded and warmed up in %.1f s", spec.name, predictor.task.name, seconds)

    def fail(self, model: ServedModel, error: BaseException) -> None:
        if isinstance(error, TfllmError) and not str(error).startswith(f"model {model.name}:"):
            error = TfllmError(f"model {model.name}: {error}")
        model.state, model.error, self.failure = FAILED, str(error), error
        if not isinstance(error, TfllmError):
            log.exception("model %s failed to load", model.name, exc_info=error)
        if self.on_fatal is not None:
            self.on_fatal()

    def describe(self, model: ServedModel, seconds: float) -> None:
        """The model's load time, info and dev-set label shares in the metrics."""
        m, predictor, spec = self.metrics, model.predictor, model.spec
        m.load_seconds.labels(spec.name).set(seconds)
        m.model_info.labels(spec.name).info({
            "task": predictor.task.name, "backend": spec.backend, "source": str(spec.path),
            "labels": ",".join(predictor.label_names), "max_length": str(predictor.task.cfg.data.max_length),
            "pair": str(predictor.pair_task).lower(),
            "precision": predictor.precision})
        if predictor.task.name in LABEL_TASKS:  # every label from 0, so a label never predicted shows
            for label in predictor.label_names:
                m.predictions.labels(spec.name, label)
        for label, share in reference_shares(spec.run_dir, predictor).items():
            m.reference_share.labels(spec.name, label).set(share)

    # --- for the handlers --------------------------------------------------------------------
    def status(self) -> dict:
        return {name: model.state for name, model in self.models.items()}


def check_servable(predictor: Predictor, spec: ModelSpec) -> None:
    """Refuse what the service cannot answer (masked-LM runs)."""
    if predictor.task.name not in SERVABLE:
        raise TfllmError(f"model {spec.name}: {spec.path} is a {predictor.task.name} run; the service "
                         f"serves {', '.join(SERVABLE)} runs (fill-mask: python -m tfllm.predict --fill-mask)")


def reference_shares(run_dir: Optional[Path], predictor: Predictor) -> dict[str, float]:
    """Each label's share of the predictions on the run's dev set (classification runs whose
    ``eval/dev/predictions.csv`` is there), the baseline of the drift alert; else empty."""
    if run_dir is None or predictor.task.name != "classification":
        return {}
    path = Path(run_dir) / rundir.EVAL / "dev" / "predictions.csv"
    try:
        with path.open(encoding="utf-8", newline="") as f:
            predicted = [row["predicted"] for row in csv.DictReader(f)]
    except (OSError, KeyError, UnicodeDecodeError, csv.Error):
        return {}
    if not predicted:
        return {}
    return {label: predicted.count(label) / len(predicted) for label in predictor.label_names}
