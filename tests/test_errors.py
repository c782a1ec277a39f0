"""The real CLIs (subprocesses) on a tiny trained run: flags between overrides are accepted, and
a corrupt run, non-UTF-8 input, a full disk, a denied write or running out of memory each end in
one ``error: ...`` line naming the file / argument / setting, a non-zero exit, no traceback, and
every file that existed before byte-identical afterwards.

Disk full uses a real 64 KiB tmpfs (needs root); permission denied a directory without write
permission (as root, the CLI runs without CAP_DAC_OVERRIDE); out of memory a model too large to
allocate. Where the machine cannot do one of those, that test is skipped and says why.
"""
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PERSUASION, ROOT, main_in_process, sentiment_rows, tiny_overrides, write_tsv

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


# --- helpers --------------------------------------------------------------------------------

def run_cli(module: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m tfllm.<module> args`` from the repository root (str, Path or bytes args)."""
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run([sys.executable, "-m", f"tfllm.{module}", *argv], cwd=ROOT,
                          capture_output=True, text=True, errors="backslashreplace", env=ENV,
                          timeout=300, **kwargs)


def digest(*folders: Path) -> dict:
    """Every path under ``folders`` with the SHA-256 of its bytes (folders as "dir")."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for folder in folders for p in sorted(folder.rglob("*"))}


def check_error(result: subprocess.CompletedProcess, pattern: str) -> str:
    """Non-zero exit, no traceback, and the last stderr line is ``error: ...`` matching ``pattern``."""
    err = result.stderr
    assert result.returncode != 0, f"exit 0; stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    assert line.startswith("error: "), f"last stderr line {line!r}; stderr:\n{err[-3000:]}"
    assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
    return line


def failing(module: str, args: list, pattern: str, *keep: Path, runner=run_cli, **kwargs) -> str:
    """Run a CLI (``runner``: a subprocess, or :func:`main_in_process`) that must fail as
    :func:`check_error` says and leave ``keep`` untouched."""
    before = digest(*keep)
    line = check_error(runner(module, *args, **kwargs), pattern)
    assert digest(*keep) == before, "files changed"
    return line


@pytest.fixture()
def in_process(capsys, monkeypatch):
    """A ``runner`` for :func:`failing`: the CLI's ``main`` in this process."""
    return lambda module, *args: main_in_process(module, list(args), capsys, monkeypatch)


# --- a tiny trained run, shared; each test corrupts its own copy -----------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_tsv(folder / "train.tsv", sentiment_rows(4))
    write_tsv(folder / "dev.tsv", sentiment_rows(1))
    return folder


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, data, tmp_path_factory):
    """Trained by the CLI with ``--overwrite`` between two overrides; ``(run dir, result)``."""
    run = tmp_path_factory.mktemp("trained") / "run"
    args = tiny_overrides(tiny_checkpoint, data / "train.tsv", data / "dev.tsv", run)
    at = args.index(f"output_dir={run}") + 1
    result = run_cli("train", *args[:at], "--overwrite", "train.max_steps=2", *args[at:])
    return run, result


@pytest.fixture()
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run."""
    source, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(shutil.copytree(source, tmp_path / "run"))


# --- flags anywhere ---------------------------------------------------------------------------

def test_train_takes_a_flag_between_overrides(trained):
    run, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2  # the override after it


def test_predict_takes_options_between_texts(run, tmp_path, in_process):
    lines = tmp_path / "lines.txt"
    lines.write_text("a dull and boring mess\n", encoding="utf-8")
    done = in_process("predict", run, "a wonderful warm film", "--batch-size", "2", "i hated it",
                   "--input", lines, "great acting")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a wonderful warm film", "i hated it", "great acting",
                                         "a dull and boring mess"]
    assert {r["label"] for r in rows} <= {"pos", "neg"}


# --- non-UTF-8 bytes --------------------------------------------------------------------------

def test_non_utf8_argument(run, in_process):
    failing("predict", [run, "fine", os.fsencode("caf") + b"\xff"],
            r"^error: argument 3 'caf\\xff' is not valid UTF-8$", run, runner=in_process)


def test_non_utf8_predict_input_file(run, tmp_path, in_process):
    bad = tmp_path / "texts.txt"
    bad.write_bytes(b"fine\nna\xefve caf\xe9\n")
    failing("predict", [run, "--input", bad], rf"^error: {re.escape(str(bad))} line 2: not valid UTF-8",
            run, tmp_path, runner=in_process)


# --- a corrupt run directory, through every consumer -----------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_config(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


CORRUPT = {  # name -> (corrupt the run, CLI, its arguments ({run}, {data}), error pattern)
    "truncated-weights": (lambda r: truncate(r / "model" / "tf_model.h5"), "evaluate",
                          ["{run}", "--data", "{data}/dev.tsv"],
                          r"/model/tf_model\.h5: cannot read the weights; the file is corrupt or truncated$"),
    "config-not-json": (lambda r: (r / "model" / "config.json").write_text('{"hidden_size": 32,'),
                        "predict", ["{run}", "a text"], r"/model/config\.json line 1: malformed JSON"),
    "config-gpt2": (lambda r: edit_config(r / "model" / "config.json", model_type="gpt2"), "export",
                    ["{run}"], r"/model/config\.json: model_type 'gpt2' is not BERT"),
    "config-missing-keys": (lambda r: edit_config(r / "model" / "config.json", hidden_size=None),
                            "predict", ["{run}", "a text"], r"/model/config\.json: missing or invalid hidden_size"),
    "label-map-not-json": (lambda r: (r / "label_map.json").write_bytes(b'{"labels": ["neg", "po'),
                           "evaluate", ["{run}", "--data", "{data}/dev.tsv"],
                           r"/label_map\.json line 1: malformed JSON"),
    "label-map-shape": (lambda r: (r / "label_map.json").write_text('{"labels": "neg,pos"}'),
                        "predict", ["{run}", "a text"], r"/label_map\.json: expected \{\"labels\""),
    "label-map-count": (lambda r: (r / "label_map.json").write_text('{"labels": ["neg", "pos", "meh"]}'),
                        "compare", ["{run}"], r"/label_map\.json: 3 labels, but the model in \S+ predicts 2$"),
    # a checkpoint of another size as model.checkpoint of a new run: its weights do not fit
    "other-shapes-as-checkpoint": (
        lambda r: edit_config(r / "model" / "config.json", hidden_size=64, intermediate_size=128),
        "train", [*tiny_overrides("{run}", "{data}/train.tsv", "{data}/dev.tsv", "{data}/new")],
        r"/model/tf_model\.h5: the weights do not fit \S+/model/config\.json"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_run(case, run, data, in_process):
    corrupt, module, args, pattern = CORRUPT[case]
    corrupt(run)
    failing(module, [str(a).format(run=run, data=data) for a in args], pattern, run, data,
            runner=in_process)
    assert not (data / "new").exists()


# --- the machine: permissions, disk, memory ---------------------------------------------------

def _drop_dac_override() -> None:
    """In the child: lose root's power to write where permissions say no (CAP_DAC_*)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unprivileged() -> dict:
    """subprocess.run arguments under which file permissions apply (as root, too)."""
    return {"preexec_fn": _drop_dac_override} if os.geteuid() == 0 else {}


def test_permission_denied(run, tmp_path, data):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("written before\n")
    locked.chmod(0o555)
    probe = subprocess.run([sys.executable, "-c", f"open({str(locked / 'probe')!r}, 'w')"],
                           capture_output=True, **unprivileged())
    if probe.returncode == 0:
        pytest.skip("cannot make a directory unwritable here (root without dropping CAP_DAC_OVERRIDE)")
    try:
        failing("evaluate", [run, "--data", data / "dev.tsv", "--out", locked / "eval"],
                rf"^error: permission denied: {re.escape(str(locked / 'eval'))}", run, locked,
                **unprivileged())
    finally:
        locked.chmod(0o755)


@pytest.fixture()
def full_disk(tmp_path):
    """A 64 KiB tmpfs holding an earlier export (a real ENOSPC once it fills up)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tfllm-test", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a real disk-full error ({done.stderr.strip()})")
    (mount / "export").mkdir()
    (mount / "export" / "model.tflite").write_bytes(b"an earlier export\n")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full(run, full_disk, in_process):
    export = full_disk / "export"
    failing("export", [run, "--out", export], rf"^error: disk full: {re.escape(str(export))}(/\S+)?$",
            run, full_disk, runner=in_process)
    assert not list(full_disk.rglob("*.tmp")), "a partial file was left behind"


def test_out_of_memory(tmp_path, in_process):
    """A real ResourceExhaustedError: the word embeddings of a 4M-wide BERT (0.5 TB) at build."""
    out = tmp_path / "mlm"
    line = failing("train", ["train.task=masked_lm", f"data.train_file={PERSUASION}", "data.dev_file=null",
                             "data.documents=blank_line", "data.max_length=32", "model.checkpoint=scratch",
                             "model.preset=tiny", "model.hidden_size=4194304", f"output_dir={out}"],
                   r"^error: out of memory \(OOM when allocating tensor with shape\[\d+,4194304\]",
                   tmp_path, runner=in_process)
    assert "train.batch_size" in line and "model.hidden_size" in line
    assert not out.exists()
