"""Execute the tutorial notebooks end to end on the tiny random BERT (fast, CPU only).

Each notebook has a cell tagged ``parameters`` (papermill style); the test inserts a cell right
after it that points the notebook at the tiny checkpoint, a short run and a temporary run dir.
"""
import json
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture()
def venv_kernel(tmp_path, monkeypatch) -> str:
    """A ``python3`` kernelspec that runs the interpreter running pytest (the venv's).

    A kernelspec named ``python3`` found first on JUPYTER_PATH wins over the user's
    (~/.local/share/jupyter) and the environment's, so writing one with ipykernel's own
    ``write_kernel_spec`` (argv[0] = ``sys.executable``, an absolute path) guarantees the
    notebook runs in this environment, whatever other kernels this machine has installed.
    """
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


def run_notebook(path: Path, parameters: str, workdir: Path, kernel_name: str):
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    injected = nbformat.v4.new_code_cell(parameters, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(tagged[0] + 1, injected)
    workdir.mkdir(parents=True, exist_ok=True)
    # metadata.path is the kernel's working directory, so the notebook's relative paths land here.
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError (with the traceback) if a cell fails
    return nb


def cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def test_finetune_notebook(tiny_checkpoint, tmp_path, venv_kernel):
    path = NOTEBOOKS / "01_finetune.ipynb"
    run_dir = tmp_path / "runs" / "tiny"
    parameters = "\n".join([
        f"CHECKPOINT = {tiny_checkpoint!r}",
        'OVERRIDES = ["train.epochs=1", "train.batch_size=16", "data.max_length=32"]',
        f"RUN_DIR = {str(run_dir)!r}",
    ])
    nb = run_notebook(path, parameters, tmp_path / "work", venv_kernel)

    errors = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs
              if out.output_type == "error"]
    assert not errors, errors
    assert (run_dir / "model" / "config.json").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 25 and metrics["history"]  # 400 built-in examples / batch 16

    texts = [cell_text(c) for c in nb.cells if c.cell_type == "code"]
    assert any("'label':" in t and "'probabilities':" in t for t in texts), "no prediction printed"
    plots = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs
             if "image/png" in out.get("data", {})]
    assert len(plots) >= 2, "expected the dev-history plot and the confusion matrix image"
