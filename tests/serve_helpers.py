"""Shared by the serve page and fuzz tests: tiny trained runs of the served tasks, and a live
server holding them (test_serve.py's ``LiveServer`` on loopback).

The runs are test_tasks.py's cases (its data and overrides); NER trains 40 steps at a higher rate
so its predictions hold entities. Each run is trained once per session, whichever module asks.
"""
from test_serve import LiveServer, loaded, wait_ready
from test_tasks import CASES, overrides
from tfllm.config import load_config
from tfllm.inference import Predictor
from tfllm.serve import ModelSpec, Settings

LONGER = {"token_classification": ["train.max_steps=40", "train.learning_rate=5e-3", "train.eval_every=40",
                                   "train.checkpoint_every=40"]}


TRAINED: dict = {}  # (task, checkpoint) -> (run_dir, predictor), for the whole session


def tiny_run(task: str, checkpoint: str, tmp_path_factory):
    """``(run_dir, predictor)`` of test_tasks' case ``task`` trained on the tiny BERT, once per session."""
    from tfllm.train import run_training

    if (task, checkpoint) not in TRAINED:
        case = CASES[task]
        root = tmp_path_factory.mktemp(f"served_{task}")
        train, dev = case.files(root)
        run_dir = run_training(load_config(None, overrides(case, checkpoint, train, dev, root / "run",
                                                           *LONGER.get(task, []))))
        TRAINED[task, checkpoint] = run_dir, Predictor.load(run_dir)
    return TRAINED[task, checkpoint]


def live_server(models: dict, settings: Settings) -> LiveServer:
    """A ready server of ``{name: (run_dir, predictor)}``, models handed over already loaded."""
    specs = [ModelSpec(name, run_dir, "keras", run_dir, loaded(predictor))
             for name, (run_dir, predictor) in models.items()]
    live = LiveServer(specs, settings)
    wait_ready(live.url)
    return live
