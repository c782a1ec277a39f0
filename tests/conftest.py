"""Shared fixtures: a tiny random-initialised BERT checkpoint and small data files.

The tiny checkpoint uses the packaged MiniLM's real WordPiece vocabulary (so tokenization is
real) with a 2-layer, 32-wide encoder, so a training step takes milliseconds.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tfllm  # noqa: F401  (selects Keras 2 before TensorFlow loads)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
# A small real corpus kept in the repository (the opening of Persuasion; see tests/data/README.md).
PERSUASION = ROOT / "tests" / "data" / "persuasion_opening.txt"
sys.path.insert(0, str(ROOT / "tests"))

# ``train.mixed_precision: auto`` (the default) resolves in the test process as on a CPU without
# bf16 hardware, for the whole session (module-scoped fixtures included): the tiny models then
# train and compare alike on every machine CI gets (AVX2 or AVX512-BF16/AMX). The decision rule
# and explicit bf16 runs have their own tests (test_training.py); subprocesses see the hardware.
from tfllm.training import strategy as _strategy  # noqa: E402

_strategy.bf16_hardware = lambda: []

POSITIVE = ["a wonderful warm film", "great acting and a clever plot", "i loved every minute",
            "superb food and friendly staff", "the best phone i have owned", "delightful and moving",
            "excellent service, will return", "a joy to read from start to end"]
NEGATIVE = ["a dull and boring mess", "terrible acting, awful plot", "i hated every minute",
            "cold food and rude staff", "the worst phone i have owned", "tedious and lifeless",
            "poor service, never again", "a chore to read, badly written"]


# The longest files first (measured, about 60-290 s each on 2 cores): with one test process per
# core (pytest-xdist, --dist loadfile) the short files then fill the gaps at the end.
LONGEST_FILES = ["test_run_lifecycle.py", "test_tasks.py", "test_distributed.py", "test_training.py",
                 "test_end_to_end.py", "test_pretraining.py", "test_export.py", "test_notebook_03.py",
                 "test_errors.py", "test_notebook_04.py", "test_serve_workers.py", "test_compression.py",
                 "test_notebook_02.py", "test_serve_fuzz.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


def write_tsv(path: Path, rows, header=("text", "label")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def sentiment_rows(repeat: int = 4):
    rows = []
    for i in range(repeat):
        rows += [(f"{t} {'!' * i}".strip(), "pos") for t in POSITIVE]
        rows += [(f"{t} {'.' * i}".strip(), "neg") for t in NEGATIVE]
    return rows


@pytest.fixture(autouse=True)
def restore_root_logging():
    """A CLI run in-process points the root logger at the test's captured (then closed) stream;
    put the handlers back so later tests do not log into a closed file."""
    import logging

    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A save_pretrained directory of a 2-layer, 32-wide random BERT with the real vocabulary,
    the same weights in every process (seeded), so a result does not depend on test order."""
    import tf_keras
    from transformers import BertConfig, TFBertModel

    from tfllm.data.tokenization import load_tokenizer
    from tfllm.models.checkpoints import resolve_checkpoint

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = load_tokenizer(resolve_checkpoint("packaged:minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    tf_keras.utils.set_random_seed(20261203)
    model = TFBertModel(config)
    model(model.dummy_inputs)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


TINY_BERT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_bert(policy: str = "float32", model_cls=None, **config):
    """A seeded, built Hugging Face ``model_cls`` (default ``TFBertForSequenceClassification``) of a
    64-word, 2-layer, 32-wide random BERT (``config`` overrides it), made under Keras ``policy``."""
    import tensorflow as tf
    from transformers import BertConfig, TFBertForSequenceClassification

    from tfllm.models.precision import keras_policy

    with keras_policy(policy):
        tf.keras.utils.set_random_seed(0)
        model = (model_cls or TFBertForSequenceClassification)(BertConfig(**{**TINY_BERT, **config}))
        model(model.dummy_inputs, training=False)
    return model


@pytest.fixture()
def sentiment_files(tmp_path):
    """Small train/dev TSV files with labels pos/neg."""
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(4))
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(1))
    return train, dev


def main_in_process(module: str, argv: list, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """``python -m tfllm.<module> argv`` run in this process (TensorFlow is already imported, so
    an error path costs milliseconds, not a new interpreter's 10 s import): ``main`` with pytest's
    logging left as is; bytes arguments arrive as the interpreter would pass them
    (``os.fsdecode``). A few tests in each CLI's file still run the real subprocess."""
    import importlib

    mod = importlib.import_module(f"tfllm.{module}")
    monkeypatch.setattr(mod, "setup_logging", lambda *a, **k: None)
    argv = [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv]
    capsys.readouterr()
    try:
        mod.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def tiny_overrides(checkpoint: str, train: Path, dev: Path, out: Path, *extra: str) -> list:
    """Config overrides for a fast run of the tiny model on the small files."""
    return [f"model.checkpoint={checkpoint}", f"data.train_file={train}", f"data.dev_file={dev}",
            f"output_dir={out}", "train.epochs=2", "train.batch_size=8", "train.learning_rate=1e-3",
            "train.log_every=2", "data.max_length=32", "train.mixed_precision=none", *extra]


def simulate_kill(run_dir: Path, copy_to: Path, step: int) -> Path:
    """Copy a finished run as a run killed right after checkpoint ``step`` would have left it."""
    import shutil

    shutil.copytree(run_dir, copy_to)
    for path in [copy_to / "model", copy_to / "eval", copy_to / "metrics.json"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path in (copy_to / "checkpoints").glob("ckpt-*"):
        if not path.name.startswith(f"ckpt-{step}."):
            path.unlink()
    (copy_to / "checkpoints" / "checkpoint").write_text(
        f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n')
    return copy_to


def assert_same_run(model_class, first: Path, second: Path) -> None:
    """Both runs saved the same weights (to float error) and the same dev history."""
    import json

    import numpy as np

    a = model_class.from_pretrained(str(first / "model"))
    b = model_class.from_pretrained(str(second / "model"))
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-6, err_msg=x.name)
    history = lambda run: json.loads((run / "metrics.json").read_text())["history"]  # noqa: E731
    for x, y in zip(history(first), history(second), strict=True):
        assert x == pytest.approx(y)


def tensorboard_tags(run_dir: Path) -> dict:
    """The summary tags written under ``run_dir/tensorboard/{train,dev}``."""
    import tensorflow as tf

    tags = {"train": set(), "dev": set()}
    for split in tags:
        for event_file in (run_dir / "tensorboard" / split).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(event_file)):
                tags[split].update(v.tag for v in event.summary.value)
    return tags


def read_scalars(logdir: Path, tag: str) -> dict:
    """``{step: value}`` of one TensorBoard scalar (tf.summary.scalar writes tensors)."""
    import tensorflow as tf

    values = {}
    for event_file in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return values
