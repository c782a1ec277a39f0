"""Execute notebooks/03_compress_export.ipynb end to end on the tiny random BERT and SST-2 slices."""
import json

import pytest

from conftest import ROOT, SHARED_DATA
from test_notebooks import cell_text, run_notebook, venv_kernel  # noqa: F401  (fixture)

SST2 = SHARED_DATA / "sst2"


@pytest.mark.skipif(not SST2.is_dir(), reason="shared SST-2 data not present")
def test_compress_export_notebook(tiny_checkpoint, tmp_path, venv_kernel):  # noqa: F811
    base = tmp_path / "runs" / "tiny"
    small = ["data.max_train_examples=200", "data.max_dev_examples=40", "train.batch_size=16",
             "train.eval_every=null", "data.max_length=48", "compression.int8.calibration_examples=16"]
    parameters = "\n".join([
        f"CONFIG = {str(ROOT / 'configs' / 'sst2_minilm.yaml')!r}",
        f"CHECKPOINT = {tiny_checkpoint!r}",
        f"DATA_DIR = {str(SST2)!r}",
        f"BASE_RUN = {str(base)!r}",
        f"BASE_OVERRIDES = {[*small, 'train.epochs=2', 'train.learning_rate=2e-3']!r}",
        f"COMPRESS_OVERRIDES = {[*small, 'train.max_steps=6', 'compression.pruning.frequency=2']!r}",
        "EVAL_EXAMPLES = 30",
        'BASE_MODES = ["none", "int8"]',
        'PRUNED_MODES = ["int8"]',  # fewer conversions: each takes ~10 s even for the tiny model
        "LATENCY_EXAMPLES = 3",
    ])
    nb = run_notebook(ROOT / "notebooks" / "03_compress_export.ipynb", parameters, tmp_path / "work",
                      venv_kernel)

    errors = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs if out.output_type == "error"]
    assert not errors, errors
    pruned = tmp_path / "runs" / "tiny_pruned50"
    compression = json.loads((pruned / "compression.json").read_text())
    info = compression["pruning"]
    assert info["overall"] == pytest.approx(0.5, abs=0.01)
    assert compression["distillation"]["enabled"]  # distilled from the base run
    assert (pruned / "export" / "model_int8.tflite").is_file()
    for name in ("model.tflite", "model_int8.tflite", "saved_model/1/saved_model.pb", "report.md"):
        assert (base / "export" / name).is_file(), name
    assert (tmp_path / "runs" / "tiny_qat" / "export" / "model_qat.tflite").is_file()
    text = "\n".join(cell_text(c) for c in nb.cells if c.cell_type == "code")
    assert "overall sparsity" in text and "tflite_int8" in text
    plots = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs
             if "image/png" in out.get("data", {})]
    assert len(plots) >= 2, "expected the sparsity plots and the size/latency plots"
