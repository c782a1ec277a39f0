"""End to end on the real packaged MiniLM checkpoint and through the real command lines."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHARED_DATA


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    """The packaged MiniLM fine-tuned on 64 built-in sentences through `python -m tfllm.train`."""
    run_dir = tmp_path_factory.mktemp("e2e") / "minilm"
    done = cli("tfllm.train", f"output_dir={run_dir}", "data.max_train_examples=96",
               "data.max_dev_examples=40", "train.epochs=3", "train.batch_size=16", "train.warmup_ratio=0",
               "train.learning_rate=3e-4", "data.max_length=48")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "classification_report" not in done.stderr
    assert "precision" in done.stdout and "accuracy" in done.stdout  # the printed dev report
    assert "loaded weights from packaged:minilm-l6" in done.stderr
    return run_dir


def test_real_checkpoint_learns_and_saves_a_transformers_model(minilm_run):
    metrics = json.loads((minilm_run / "metrics.json").read_text())
    assert metrics["dev"]["examples"] == 40
    # 96 examples, 18 steps: the pretrained encoder already separates sentiment well.
    assert metrics["dev"]["accuracy"] >= 0.7, metrics["dev"]

    from transformers import TFBertForSequenceClassification

    model = TFBertForSequenceClassification.from_pretrained(str(minilm_run / "model"))
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_predict_cli_prints_json_lines(minilm_run, tmp_path):
    inputs = tmp_path / "texts.txt"
    inputs.write_text("a dreadful, boring film\nwhat a wonderful, kind hotel\n", encoding="utf-8")
    done = cli("tfllm.predict", str(minilm_run), "an absolute delight", "--input", str(inputs))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["an absolute delight", "a dreadful, boring film",
                                         "what a wonderful, kind hotel"]
    for row in rows:
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)


def test_evaluate_cli_writes_reports(minilm_run, tmp_path):
    data = tmp_path / "eval.csv"
    data.write_text("text,label\nawful and dull,negative\nlovely and fun,positive\n"
                    "\"rude staff, cold food\",negative\n", encoding="utf-8")
    out = tmp_path / "out"
    done = cli("tfllm.evaluate", str(minilm_run), "--data", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accuracy=" in done.stdout and "macro avg" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 3 and np.array(metrics["confusion_matrix"]).sum() == 3
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "predictions.csv").read_text().count("\n") == 4


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="shared data not present")
def test_real_data_smoke_sst2(tiny_checkpoint, tmp_path):
    """A short run on real SST-2 files through the SST-2 config (tiny model, 200 examples)."""
    done = cli("tfllm.train", "--config", "configs/sst2_minilm.yaml", f"model.checkpoint={tiny_checkpoint}",
               f"data.train_file={SHARED_DATA}/sst2/train.tsv", f"data.dev_file={SHARED_DATA}/sst2/dev.tsv",
               "data.max_train_examples=200", "data.max_dev_examples=100", "train.eval_every=null",
               f"output_dir={tmp_path}/sst2", "train.log_every=5")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "sst2" / "metrics.json").read_text())
    assert metrics["dev"]["examples"] == 100 and metrics["steps"] == 7
