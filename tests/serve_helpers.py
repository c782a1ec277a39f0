"""Shared by the serve page and fuzz tests: tiny trained runs of the served tasks, and a live
server holding them (test_serve.py's ``LiveServer`` on loopback).

The runs are test_tasks.py's cases (its data and overrides); NER trains 40 steps at a higher rate
so its predictions hold entities. Each run is trained once per test session, whichever module and
whichever pytest-xdist worker asks first (the others wait on a file lock and load it).
"""
import fcntl
import os
from pathlib import Path

from test_serve import LiveServer, loaded, wait_ready
from test_tasks import CASES, overrides
from tfllm.config import load_config
from tfllm.inference import Predictor
from tfllm.serve import ModelSpec, Settings

LONGER = {"token_classification": ["train.max_steps=40", "train.learning_rate=5e-3", "train.eval_every=40",
                                   "train.checkpoint_every=40"]}


TRAINED: dict = {}  # task -> (run_dir, predictor), in this process


def session_folder(tmp_path_factory) -> Path:
    """A folder every worker of this test session sees (the workers' base temp's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def tiny_run(task: str, checkpoint: str, tmp_path_factory):
    """``(run_dir, predictor)`` of test_tasks' case ``task`` trained on the tiny BERT, once per session."""
    from tfllm.train import run_training

    if task not in TRAINED:
        root = session_folder(tmp_path_factory) / f"served_{task}"
        with open(f"{root}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (root / "run" / "metrics.json").is_file():
                root.mkdir(exist_ok=True)
                case = CASES[task]
                train, dev = case.files(root)
                run_training(load_config(None, overrides(case, checkpoint, train, dev, root / "run",
                                                         *LONGER.get(task, []))),
                             overwrite=True)  # a run an interrupted session left half done
        TRAINED[task] = root / "run", Predictor.load(root / "run")
    return TRAINED[task]


def live_server(models: dict, settings: Settings) -> LiveServer:
    """A ready server of ``{name: (run_dir, predictor)}``, models handed over already loaded."""
    specs = [ModelSpec(name, run_dir, "keras", run_dir, loaded(predictor))
             for name, (run_dir, predictor) in models.items()]
    live = LiveServer(specs, settings)
    wait_ready(live.url)
    return live
