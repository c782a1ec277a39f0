"""Shared fixtures: a tiny random-initialised BERT checkpoint and small data files.

The tiny checkpoint uses the packaged MiniLM's real WordPiece vocabulary (so tokenization is
real) with a 2-layer, 32-wide encoder, so a training step takes milliseconds.
"""
import os
import sys
from pathlib import Path

import pytest

import tfllm  # noqa: F401  (selects Keras 2 before TensorFlow loads)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

POSITIVE = ["a wonderful warm film", "great acting and a clever plot", "i loved every minute",
            "superb food and friendly staff", "the best phone i have owned", "delightful and moving",
            "excellent service, will return", "a joy to read from start to end"]
NEGATIVE = ["a dull and boring mess", "terrible acting, awful plot", "i hated every minute",
            "cold food and rude staff", "the worst phone i have owned", "tedious and lifeless",
            "poor service, never again", "a chore to read, badly written"]


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A save_pretrained directory of a 2-layer, 32-wide random BERT with the real vocabulary."""
    from transformers import BertConfig, TFBertModel

    from tfllm.data.tokenization import load_tokenizer
    from tfllm.models.checkpoints import resolve_checkpoint

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = load_tokenizer(resolve_checkpoint("packaged:minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    model = TFBertModel(config)
    model(model.dummy_inputs)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


@pytest.fixture()
def sentiment_files(tmp_path):
    """Small train/dev TSV files with labels pos/neg."""
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(4))
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(1))
    return train, dev


def tiny_overrides(checkpoint: str, train: Path, dev: Path, out: Path, *extra: str) -> list:
    """Config overrides for a fast run of the tiny model on the small files."""
    return [f"model.checkpoint={checkpoint}", f"data.train_file={train}", f"data.dev_file={dev}",
            f"output_dir={out}", "train.epochs=2", "train.batch_size=8", "train.learning_rate=1e-3",
            "train.log_every=2", "data.max_length=32", *extra]
