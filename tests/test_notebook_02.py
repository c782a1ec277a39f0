"""Execute notebooks/02_pretrain_mlm.ipynb end to end on the tiny random BERT and a small corpus."""
import json

import pytest

from conftest import PERSUASION, ROOT

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from test_notebooks import NOTEBOOKS, cell_text, run_notebook, venv_kernel  # noqa: E402,F401


def test_pretrain_notebook(tiny_checkpoint, tmp_path, venv_kernel):  # noqa: F811
    corpus = tmp_path / "persuasion.txt"
    lines = PERSUASION.read_text(encoding="utf-8").splitlines()
    corpus.write_text("\n".join(lines[:1200]) + "\n", encoding="utf-8")
    runs = tmp_path / "runs"
    parameters = "\n".join([
        f"CORPUS = {str(corpus)!r}",
        f"CHECKPOINT = {tiny_checkpoint!r}",
        'COMMON = ["data.documents=blank_line", "data.dev_fraction=0.1", "data.max_dev_examples=16"]',
        'CONTINUE_OVERRIDES = ["train.max_steps=10", "train.batch_size=8", "data.max_length=32", '
        '"train.eval_every=5", "train.log_every=5"]',
        'SCRATCH_OVERRIDES = ["train.max_steps=20", "train.batch_size=16", "data.max_length=32", '
        '"train.eval_every=10", "train.log_every=10", "model.vocab_size=500"]',
        f"RUN_ROOT = {str(runs)!r}",
        f"CONFIG_DIR = {str(ROOT / 'configs')!r}",
    ])
    nb = run_notebook(NOTEBOOKS / "02_pretrain_mlm.ipynb", parameters, tmp_path / "work", venv_kernel)

    errors = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs
              if out.output_type == "error"]
    assert not errors, errors
    for name, steps in (("02_continue", 10), ("02_scratch", 20)):
        metrics = json.loads((runs / name / "metrics.json").read_text())
        assert metrics["steps"] == steps and len(metrics["history"]) == 2
        assert (runs / name / "model" / "tf_model.h5").is_file()
    assert (runs / "02_scratch" / "tokenizer" / "vocab.txt").is_file()

    texts = "\n".join(cell_text(c) for c in nb.cells if c.cell_type == "code")
    assert "the movie was [MASK] ." in texts and "->" in texts  # fill-mask lines
    assert "new (randomly initialised): classifier" in texts
    plots = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs
             if "image/png" in out.get("data", {})]
    assert plots, "expected the perplexity curve"
