"""The run lifecycle a user can trust: overwrite never deletes what tfllm did not make, resume of
a finished run changes nothing, unreadable checkpoints are skipped, and interruptions (Ctrl-C,
SIGTERM, kill -9 at the worst moments) leave a run that resumes to the same weights."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, assert_same_run, main_in_process, simulate_kill, tiny_overrides
from tfllm.config import load_config
from tfllm.errors import TfllmError
from tfllm.train import run_training

FAST = ["train.checkpoint_every=2", "train.keep_checkpoints=20", "train.restore_best=false"]


def tree_digest(folder: Path) -> dict:
    """Every file under ``folder`` with its content hash (the folder's exact state)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    """A folder of a user's own files (no tfllm marker)."""
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "ideas.md").write_text("keep me\n")
    (path / "thesis.tex").write_text("\\begin{document}\n")
    return path


def train_cli(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tfllm.train", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def resume(run_dir: Path) -> Path:
    """What ``python -m tfllm.train --resume output_dir=RUN`` does, in this process."""
    return run_training(load_config(run_dir / "config.yaml", [f"output_dir={run_dir}"]), resume=True)


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoint, tmp_path_factory):
    """One uninterrupted tiny run (16 steps, checkpoints every 2): the reference weights."""
    from conftest import sentiment_rows, write_tsv

    folder = tmp_path_factory.mktemp("lifecycle")
    train = write_tsv(folder / "train.tsv", sentiment_rows(4))
    dev = write_tsv(folder / "dev.tsv", sentiment_rows(1))
    run = run_training(load_config(None, tiny_overrides(tiny_checkpoint, train, dev, folder / "full", *FAST)))
    return run, train, dev


# --- overwrite: only tfllm's own run directories ----------------------------------------------
def test_overwrite_refuses_the_current_directory_with_user_files(finished_run, tmp_path, capsys, monkeypatch):
    """``python -m tfllm.train --overwrite output_dir=.`` (its ``main`` in this process)."""
    run, train, dev = finished_run
    folder = user_folder(tmp_path / "work")
    before = tree_digest(folder)
    monkeypatch.chdir(folder)
    done = main_in_process("train", ["--overwrite", "output_dir=.", f"data.train_file={train}"], capsys, monkeypatch)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert last_line(done.stderr).startswith("error: output_dir . holds files tfllm did not create")
    assert tree_digest(folder) == before


@pytest.mark.parametrize("where", ["cwd", "ancestor", "home"])
def test_overwrite_never_deletes_cwd_its_ancestors_or_home_even_if_they_look_like_runs(
        finished_run, tmp_path, monkeypatch, where):
    run, train, dev = finished_run
    fake_run = tmp_path / "looks_like_a_run"
    shutil.copytree(run, fake_run)  # carries a genuine run_info.json
    inside = fake_run / "eval"
    monkeypatch.chdir(inside if where == "ancestor" else fake_run)
    monkeypatch.setenv("HOME", str(fake_run if where == "home" else tmp_path / "elsewhere"))
    before = tree_digest(fake_run)
    target = "." if where == "cwd" else str(fake_run)
    if where == "home":
        monkeypatch.chdir(tmp_path)
    cfg = load_config(None, tiny_overrides(str(run / "model"), train, dev, target))
    expected = {"cwd": "it is the current directory", "ancestor": "it contains the current directory",
                "home": "it is the home directory"}[where]
    with pytest.raises(TfllmError, match=expected):
        run_training(cfg, overwrite=True)
    assert tree_digest(fake_run) == before


def test_overwrite_refuses_a_folder_of_notes_and_replaces_a_real_run(finished_run, tmp_path):
    run, train, dev = finished_run
    notes = user_folder(tmp_path / "notes_folder")
    before = tree_digest(notes)
    with pytest.raises(TfllmError, match="holds files tfllm did not create"):
        run_training(load_config(None, tiny_overrides(str(run / "model"), train, dev, notes)), overwrite=True)
    assert tree_digest(notes) == before
    with pytest.raises(TfllmError, match="is not a tfllm run directory"):
        run_training(load_config(None, tiny_overrides(str(run / "model"), train, dev, notes)), resume=True)
    assert tree_digest(notes) == before

    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    (old / "stale.txt").write_text("from the previous run")
    replaced = run_training(load_config(None, tiny_overrides(str(run / "model"), train, dev, old,
                                                              "train.max_steps=2")), overwrite=True)
    assert not (replaced / "stale.txt").exists() and json.loads((replaced / "metrics.json").read_text())["steps"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".old_run")]  # nothing left aside


@pytest.mark.parametrize("name", ["./", "../..", "a/b", "..", ""])
def test_run_names_must_be_one_folder_under_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "precious").write_text("x")
    with pytest.raises(TfllmError, match="config key name"):
        run_training(load_config(None, [f"name={name}"]), overwrite=True)
    assert (tmp_path / "runs" / "precious").read_text() == "x"


# --- resume -----------------------------------------------------------------------------------
def test_resume_of_a_finished_run_changes_nothing(finished_run, tmp_path, caplog):
    run, train, dev = finished_run
    copy = tmp_path / "done"
    shutil.copytree(run, copy)
    before = tree_digest(copy)
    with caplog.at_level("INFO", logger="tfllm"):
        assert resume(copy) == copy
    assert tree_digest(copy) == before
    assert "already finished at step 16" in caplog.text and "nothing changed" in caplog.text


def test_resume_after_a_kill_in_the_final_phase_keeps_the_best_weights(tiny_checkpoint, sentiment_files, tmp_path):
    """A run killed after its last checkpoint, before model/ was saved: --resume must restore
    the best dev weights (not the last step's) and must not train an early-stopped run on."""
    train, dev = sentiment_files
    extra = ["train.eval_every=1", "train.epochs=30", "train.early_stopping_patience=2",
             "train.early_stopping_metric=loss", "train.learning_rate=5e-3"]
    full = run_training(load_config(None, tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "es", *extra)))
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["best_step"] < metrics["steps"]
    killed = simulate_kill(full, tmp_path / "killed", step=metrics["steps"])
    resumed = resume(killed)

    from transformers import TFBertForSequenceClassification

    assert_same_run(TFBertForSequenceClassification, full, resumed)
    assert json.loads((resumed / "metrics.json").read_text())["steps"] == metrics["steps"]


def test_resume_skips_an_unreadable_checkpoint_and_refuses_another_architecture(finished_run, tmp_path, caplog):
    run, train, dev = finished_run
    killed = simulate_kill(run, tmp_path / "killed", step=8)
    shutil.copy(run / "checkpoints" / "ckpt-6.index", killed / "checkpoints")
    shutil.copy(run / "checkpoints" / "ckpt-6.data-00000-of-00001", killed / "checkpoints")
    data = killed / "checkpoints" / "ckpt-8.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])  # truncated, as a full disk leaves it
    with caplog.at_level("WARNING", logger="tfllm"):
        resumed = resume(killed)
    assert "ckpt-8 is unreadable" in caplog.text and "falling back" in caplog.text

    from transformers import TFBertForSequenceClassification

    assert_same_run(TFBertForSequenceClassification, run, resumed)

    other = simulate_kill(run, tmp_path / "other", step=8)
    wider = tmp_path / "wider_bert"  # the same vocabulary, 48 wide instead of 32
    from transformers import BertConfig, TFBertModel

    bert = TFBertModel(BertConfig.from_pretrained(str(run / "model"), hidden_size=48, intermediate_size=96))
    bert(bert.dummy_inputs)
    bert.save_pretrained(str(wider))
    shutil.copy(run / "model" / "vocab.txt", wider)
    with pytest.raises(TfllmError, match="ckpt-8 does not fit this model"):
        run_training(load_config(other / "config.yaml", [f"output_dir={other}", f"model.checkpoint={wider}"]),
                     resume=True)


# --- interruptions ----------------------------------------------------------------------------
def wait_for_checkpoint(run_dir: Path, exited=lambda: None, timeout: float = 240):
    """Block until a training run (a subprocess: ``exited`` is its ``poll``) wrote a checkpoint."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and exited() is None:
        if list((run_dir / "checkpoints").glob("ckpt-*.index")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint appeared (exit {exited()})")


SIGNAL_RUN = [*FAST, "train.epochs=10"]  # 80 steps: a signal lands mid-training


@pytest.fixture(scope="module")
def long_run(finished_run, tiny_checkpoint):
    """The uninterrupted 80-step run that interrupted-and-resumed runs must reproduce."""
    run, train, dev = finished_run
    return run_training(load_config(None, tiny_overrides(tiny_checkpoint, train, dev, run.parent / "long",
                                                         *SIGNAL_RUN)))


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(finished_run, long_run, tiny_checkpoint, tmp_path):
    """A real SIGTERM to a training process: one line, exit 143, and --resume finishes the run."""
    run, train, dev = finished_run
    out = tmp_path / "signalled"
    proc = subprocess.Popen([sys.executable, "-m", "tfllm.train",
                             *tiny_overrides(tiny_checkpoint, train, dev, out, *SIGNAL_RUN)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_for_checkpoint(out, proc.poll)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    line = last_line(err)
    assert line.startswith("interrupted: SIGTERM at step ")
    assert line.endswith(f"checkpoint saved; continue with python -m tfllm.train --resume output_dir={out}")
    step = int(line.split(" at step ")[1].split(":")[0])
    assert (out / "checkpoints" / f"ckpt-{step}.index").is_file()
    assert step < 80 and not (out / "metrics.json").exists()

    from transformers import TFBertForSequenceClassification

    assert_same_run(TFBertForSequenceClassification, long_run, resume(out))


def test_ctrl_c_saves_a_checkpoint_then_resume_gives_the_same_weights(finished_run, long_run, tiny_checkpoint,
                                                                     tmp_path):
    """Ctrl-C (SIGINT to this process, as a terminal or Jupyter's interrupt sends it)."""
    import threading

    from tfllm.errors import Interrupted

    run, train, dev = finished_run
    out = tmp_path / "ctrl_c"
    cfg = load_config(None, tiny_overrides(tiny_checkpoint, train, dev, out, *SIGNAL_RUN))
    presser = threading.Thread(target=lambda: (wait_for_checkpoint(out), os.kill(os.getpid(), signal.SIGINT)))
    presser.start()
    with pytest.raises(Interrupted, match="^SIGINT at step .*: checkpoint saved; continue with") as stop:
        run_training(cfg)
    presser.join()
    assert stop.value.exit_code == 130 and not (out / "metrics.json").exists()

    from transformers import TFBertForSequenceClassification

    assert_same_run(TFBertForSequenceClassification, long_run, resume(out))


def test_kill_9_at_the_worst_moments_resumes_to_the_same_weights(finished_run, tiny_checkpoint, tmp_path):
    """SIGKILL right after a checkpoint is written, after the final model/ is written but before
    it is renamed into place, between the report's write and its rename, and between the two
    renames that swap an existing model/ (the one the previous kill left): each time ``--resume``
    picks up, and the run ends with the weights of the uninterrupted one."""
    from transformers import TFBertForSequenceClassification

    run, train, dev = finished_run
    out = tmp_path / "killed"
    first = train_cli(*tiny_overrides(tiny_checkpoint, train, dev, out, *FAST),
                      env={"TFLLM_KILL_AT": "checkpoint_saved:3"})
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert tf_latest(out).endswith("ckpt-6")
    for point in ["directory_written", "file_written/metrics.json:2", "directory_moved_aside"]:
        done = train_cli("--resume", f"output_dir={out}", env={"TFLLM_KILL_AT": point})
        assert done.returncode == -signal.SIGKILL, (point, done.stderr[-3000:])
        assert not (out / "metrics.json").exists()
    assert not (out / "model").exists()  # moved aside, its replacement not yet in place
    done = train_cli("--resume", f"output_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(TFBertForSequenceClassification, run, out)
    assert not list(out.rglob(".*.tmp")) and not (out / ".model.old").exists()  # nothing half-written left


def tf_latest(run_dir: Path) -> str:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
