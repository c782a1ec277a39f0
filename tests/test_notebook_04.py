"""Notebook 04 (regression, multi-label, NER) executed end to end on the tiny BERT and real data."""
import json

import pytest

from conftest import SHARED_DATA
from test_notebooks import cell_text, run_notebook, venv_kernel  # noqa: F401

NEEDED = ["glue_stsb/train.tsv", "goemotions/labels.txt", "conll2003/dev.txt"]


def test_tasks_notebook(tiny_checkpoint, tmp_path, venv_kernel):  # noqa: F811
    if not all((SHARED_DATA / f).is_file() for f in NEEDED):
        pytest.skip("../shared/data is not here")
    from conftest import ROOT

    runs = tmp_path / "runs"
    parameters = "\n".join([f"CHECKPOINT = {tiny_checkpoint!r}", f"DATA = {str(SHARED_DATA)!r}",
                            "STEPS = 6", "TRAIN_EXAMPLES = 96", "DEV_EXAMPLES = 48", f"RUNS = {str(runs)!r}"])
    nb = run_notebook(ROOT / "notebooks" / "04_tasks.ipynb", parameters, tmp_path / "work", venv_kernel)
    for name, metric in (("stsb", "pearson"), ("goemotions", "macro_f1"), ("conll2003", "f1")):
        metrics = json.loads((runs / name / "metrics.json").read_text())
        assert metrics["steps"] == 6 and metric in metrics["dev"], name
    text = "\n".join(cell_text(c) for c in nb.cells if c.cell_type == "code")
    # the NER row (a 6-step tiny model may find no entity; the notebook asserts the offsets of any)
    assert "'entities': [" in text and "Peter Blackburn met EU officials" in text
    assert text.count("TFLite (dynamic-range int8):") == 3
