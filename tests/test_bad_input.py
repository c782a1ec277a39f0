"""Bad input gets one clear ``error: ...`` line naming the file/row/key, a non-zero exit, no
traceback, and leaves an existing run directory untouched.

Most cases run in-process through the CLI entry points (``tfllm.train.main`` etc.), which is
what ``python -m`` calls; a handful run as real subprocesses to prove the command-line behaviour
(each pays ~8 s of TensorFlow import).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
# transformers binds its log handler to sys.stderr when first imported: import it here, not inside
# a capsys-captured test whose stream is closed afterwards ("Logging error ... closed file").
import transformers  # noqa: F401

from conftest import ROOT, main_in_process, sentiment_rows, tiny_overrides, write_tsv

GUARD_CHECKPOINT = "model.checkpoint=/nonexistent/guard"  # if a bad input slipped through, stop here


# --- helpers --------------------------------------------------------------------------------

def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its bytes (directories as None)."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


@pytest.fixture()
def existing_run(tmp_path) -> Path:
    """A run directory from an earlier run: marker, config, label map and a model/ with weights."""
    from tfllm.config import load_config, save_config

    run = tmp_path / "runs" / "earlier"
    (run / "model").mkdir(parents=True)
    (run / "marker.txt").write_text("earlier run, keep me\n")
    (run / "model" / "tf_model.h5").write_bytes(b"\x89HDF fake weights")
    (run / "label_map.json").write_text('{"labels": ["neg", "pos"]}')
    (run / "run_info.json").write_text('{"versions": {"tfllm": "0.1.0"}, "seed": 42}')  # tfllm's marker
    save_config(load_config(None, [f"output_dir={run}"]), run / "config.yaml")
    return run


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_error(code, stderr: str, pattern: str) -> str:
    assert code not in (0, None), f"expected a non-zero exit, got {code}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    line = last_line(stderr)
    assert line.startswith("error: "), f"last stderr line: {line!r}\nstderr:\n{stderr}"
    assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
    return line


def call_main(module: str, argv: list, capsys, monkeypatch):
    """``tfllm.<module>.main(argv)`` in this process; returns (exit code, stderr)."""
    done = main_in_process(module, argv, capsys, monkeypatch)
    return done.returncode, done.stderr


def run_cli(module: str, *args, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"tfllm.{module}", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


GOOD = "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sentiment_rows(1))

# name -> (files to write {name: bytes}, overrides ({d} = the data folder), error pattern)
DATA_CASES = {
    "missing-file": ({}, ["data.train_file={d}/nope.tsv"], r"data file not found: \S*/nope\.tsv$"),
    "missing-dev-file": ({}, ["data.dev_file={d}/nodev.csv"], r"data file not found: \S*/nodev\.csv$"),
    "empty-file": ({"e.tsv": b""}, ["data.train_file={d}/e.tsv"], r"/e\.tsv: file is empty$"),
    "blank-file": ({"e.csv": b"\n  \n\n"}, ["data.train_file={d}/e.csv"], r"/e\.csv: file is empty$"),
    "empty-jsonl": ({"e.jsonl": b""}, ["data.train_file={d}/e.jsonl"], r"/e\.jsonl: file is empty$"),
    "header-only": ({"h.tsv": b"text\tlabel\n"}, ["data.train_file={d}/h.tsv"],
                    r"/h\.tsv: no data rows \(header only\?\)$"),
    "header-only-csv-dev": ({"h.csv": b"text,label\n"}, ["data.dev_file={d}/h.csv"],
                            r"/h\.csv: no data rows"),
    "no-text-column": ({"c.tsv": b"sentence\tlabel\nhi\tpos\n"}, ["data.train_file={d}/c.tsv"],
                       r"/c\.tsv: no column 'text' \(columns: sentence, label\)$"),
    "no-label-column": ({"c.csv": b"text,category\nhi,pos\n"}, ["data.train_file={d}/c.csv"],
                        r"/c\.csv: no column 'label' \(columns: text, category\)$"),
    "no-pair-column": ({}, ["data.text_pair_column=second"], r"/good\.tsv: no column 'second'"),
    "no-label-key-jsonl": ({"k.jsonl": b'{"text": "hi", "y": "pos"}\n'}, ["data.train_file={d}/k.jsonl"],
                           r"/k\.jsonl: no column 'label' \(columns: text, y\)$"),
    "empty-text": ({"t.tsv": b"text\tlabel\nhi\tpos\n\tneg\n"}, ["data.train_file={d}/t.tsv"],
                   r"/t\.tsv row 2: empty text in column 'text'$"),
    "whitespace-text": ({"t.csv": b'text,label\nhi,pos\nho,neg\n"   ",neg\n'}, ["data.train_file={d}/t.csv"],
                        r"/t\.csv row 3: empty text in column 'text'$"),
    "whitespace-text-tsv-dev": ({"t.tsv": b"text\tlabel\n   \tpos\n"}, ["data.dev_file={d}/t.tsv"],
                                r"/t\.tsv row 1: empty text in column 'text'$"),
    "null-text-jsonl": ({"t.jsonl": b'{"text": "hi", "label": "pos"}\n{"text": null, "label": "neg"}\n'},
                        ["data.train_file={d}/t.jsonl"], r"/t\.jsonl row 2: empty text in column 'text'$"),
    "empty-pair-text": ({"p.tsv": b"text\tsecond\tlabel\na\tb\tpos\nc\t\tneg\n"},
                        ["data.train_file={d}/p.tsv", "data.text_pair_column=second"],
                        r"/p\.tsv row 2: empty text in column 'second'$"),
    "empty-label-tsv": ({"l.tsv": b"text\tlabel\nhi\tpos\nho\t\n"}, ["data.train_file={d}/l.tsv"],
                        r"/l\.tsv row 2: missing label in column 'label'$"),
    "empty-label-csv": ({"l.csv": b"text,label\nhi,pos\nho,\nhu,neg\n"}, ["data.train_file={d}/l.csv"],
                        r"/l\.csv row 2: missing label in column 'label'$"),
    "short-row-csv": ({"l.csv": b"text,label\nhi,pos\nho\n"}, ["data.train_file={d}/l.csv"],
                      r"/l\.csv row 2: missing label in column 'label'$"),
    "null-label-jsonl": ({"l.jsonl": b'{"text": "hi", "label": "pos"}\n{"text": "ho", "label": null}\n'},
                         ["data.train_file={d}/l.jsonl"], r"/l\.jsonl row 2: missing label in column 'label'$"),
    "nan-label-jsonl": ({"l.jsonl": b'{"text": "hi", "label": 1}\n{"text": "ho", "label": NaN}\n'},
                        ["data.train_file={d}/l.jsonl"], r"/l\.jsonl row 2: missing label in column 'label'$"),
    "absent-label-jsonl": ({"l.jsonl": b'{"text": "hi", "label": "pos"}\n{"text": "ho"}\n'},
                           ["data.train_file={d}/l.jsonl"], r"/l\.jsonl row 2: missing label"),
    "unseen-dev-label": ({"dev.tsv": (GOOD + "so so\tmeh\n").encode()}, ["data.dev_file={d}/dev.tsv"],
                         r"/dev\.tsv row 17: label 'meh' was never seen in training \(known labels: neg, pos\)$"),
    "unseen-test-label": ({"test.csv": b"text,label\nfine,pos\nso so,meh\n"}, ["data.test_file={d}/test.csv"],
                          r"/test\.csv row 2: label 'meh' was never seen in training"),
    "unseen-dev-label-subsampled": ({"dev.tsv": (GOOD + "so so\tmeh\n").encode()},
                                    ["data.dev_file={d}/dev.tsv", "data.max_dev_examples=4"],
                                    r"/dev\.tsv row 17: label 'meh' was never seen"),
    "label-not-in-label-names": ({}, ["data.label_names=[0, 1]"],
                                 r"/good\.tsv row 1: label 'pos' is not in config key data\.label_names"),
    "non-utf8": ({"u.tsv": b"text\tlabel\nhi\tpos\nh\xe9llo\tneg\n"}, ["data.train_file={d}/u.tsv"],
                 r"/u\.tsv line 3: not valid UTF-8 \(byte 0xe9\)"),
    "non-utf8-jsonl-dev": ({"u.jsonl": b'{"text": "hi", "label": "pos"}\n{"text": "\xff", "label": "neg"}\n'},
                           ["data.dev_file={d}/u.jsonl"], r"/u\.jsonl line 2: not valid UTF-8 \(byte 0xff\)"),
    "utf16-file": ({"w.csv": "text,label\nhi,pos\n".encode("utf-16")}, ["data.train_file={d}/w.csv"],
                   r"/w\.csv line 1: not valid UTF-8"),
    "malformed-csv-line": ({"m.csv": b"text,label\nhi,pos\nho,neg,extra\n"}, ["data.train_file={d}/m.csv"],
                           r"/m\.csv: malformed CSV: Expected 2 fields in line 3, saw 3$"),
    "malformed-csv-first-row": ({"m.csv": b"text,label\nhi,pos,extra\nho,neg\n"}, ["data.train_file={d}/m.csv"],
                                r"/m\.csv: malformed CSV: Expected 2 fields in line 2, saw 3$"),
    "malformed-csv-quote": ({"m.csv": b'text,label\nhi,pos\n"never closed,neg\nho,neg\n'},
                            ["data.train_file={d}/m.csv"], r"/m\.csv: malformed CSV: EOF inside string"),
    "malformed-tsv-line": ({"m.tsv": b"text\tlabel\nhi\tpos\nho\tneg\textra\n"}, ["data.train_file={d}/m.tsv"],
                           r"/m\.tsv: malformed TSV: Expected 2 fields in line 3, saw 3$"),
    "malformed-jsonl-line": ({"m.jsonl": b'{"text": "hi", "label": "pos"}\n{"text": "ho", "label"\n'},
                             ["data.train_file={d}/m.jsonl"], r"/m\.jsonl line 2: malformed JSON \("),
    "jsonl-line-not-object": ({"m.jsonl": b'{"text": "hi", "label": "pos"}\n["ho", "neg"]\n'},
                              ["data.train_file={d}/m.jsonl"], r"/m\.jsonl line 2: expected a JSON object per line$"),
    "malformed-json": ({"m.json": b'[{"text": "hi", "label": "pos"},\n'}, ["data.train_file={d}/m.json"],
                       r"/m\.json line 2: malformed JSON \("),
    "not-parquet": ({"m.parquet": b"PAR1 but not really"}, ["data.train_file={d}/m.parquet"],
                    r"/m\.parquet: cannot read parquet: "),
    "unknown-extension": ({"data.xyz": b"text\tlabel\nhi\tpos\n"}, ["data.train_file={d}/data.xyz"],
                          r"/data\.xyz: cannot tell the format from the extension; set data\.format$"),
    "wrong-format-for-file": ({}, ["data.format=csv"], r"/good\.tsv: malformed CSV: Expected 1 fields in line 8"),
    "no-train-file": ({}, ["data.train_file=null"], r"config key data\.train_file: no training data given"),
    "hf-dataset-missing-dir": ({}, ["data.hf_dataset={d}/no_such_dataset"], r"hf dataset \S*/no_such_dataset"),
    "dev-fraction-out-of-range": ({}, ["data.dev_file=null", "data.dev_fraction=1.5"],
                                  r"config key data\.dev_fraction: 1\.5 must be between 0 and 1$"),
}


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_one_line_error_and_run_dir_untouched(case, flag, tmp_path, existing_run, capsys, monkeypatch):
    files, overrides, pattern = DATA_CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.tsv").write_text(GOOD, encoding="utf-8")
    for name, content in files.items():
        (data / name).write_bytes(content)
    before = snapshot(existing_run)
    argv = [flag, f"data.train_file={data}/good.tsv", f"data.dev_file={data}/good.tsv",
            f"output_dir={existing_run}", GUARD_CHECKPOINT] + [o.format(d=data) for o in overrides]
    code, err = call_main("train", argv, capsys, monkeypatch)
    check_error(code, err, pattern)
    assert snapshot(existing_run) == before


CONFIG_CASES = {
    "unknown-key": (["train.learnig_rate=1e-3"],
                    r"^error: unknown config key 'train\.learnig_rate'; did you mean train\.learning_rate\?$"),
    "unknown-top-key": (["outptu_dir=x"], r"unknown config key 'outptu_dir'; did you mean output_dir\?$"),
    "unknown-section": (["trian.epochs=1"], r"unknown config key 'trian'; did you mean train\?$"),
    "wrong-type-int": (["train.batch_size=lots"], r"config key train\.batch_size: expected an integer, got 'lots'$"),
    "wrong-type-float": (["train.learning_rate=fast"], r"config key train\.learning_rate: expected a number"),
    "wrong-type-bool": (["data.has_header=maybe"], r"config key data\.has_header: expected true/false"),
    "wrong-type-section": (["train=3"], r"config key train: expected a mapping of keys, got 3$"),
    "unknown-format": (["data.format=xml"], r"config key data\.format: 'xml' is not one of \['auto', 'csv'"),
    "format-typo": (["data.format=jsonn"], r"config key data\.format: .*\(did you mean 'json'\?\)$"),
    "no-equals": (["train.epochs"], r"override 'train\.epochs' is not of the form key=value"),
    "zero-batch": (["train.batch_size=0"], r"config key train\.batch_size: must be at least 1, got 0$"),
    "max-length": (["data.max_length=1024"], r"config key data\.max_length: BERT position embeddings stop at 512$"),
    "nan-learning-rate": (["train.learning_rate=.nan"], r"config key train\.learning_rate: must be a finite number"),
    "missing-checkpoint-dir": (["model.checkpoint=/nonexistent/dir"], r"checkpoint not found: /nonexistent/dir$"),
    "unknown-packaged": (["model.checkpoint=packaged:bert-huge"],
                         r"unknown packaged checkpoint 'bert-huge' \(known: minilm-l6\)$"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_one_line_error_and_run_dir_untouched(case, tmp_path, existing_run, capsys, monkeypatch):
    overrides, pattern = CONFIG_CASES[case]
    good = write_tsv(tmp_path / "good.tsv", sentiment_rows(1))
    before = snapshot(existing_run)
    argv = ["--overwrite", f"data.train_file={good}", f"data.dev_file={good}", f"output_dir={existing_run}",
            *(overrides if any(o.startswith("model.") for o in overrides) else [GUARD_CHECKPOINT, *overrides])]
    code, err = call_main("train", argv, capsys, monkeypatch)
    check_error(code, err, pattern)
    assert snapshot(existing_run) == before


def test_checkpoint_dir_without_config(tmp_path, existing_run, capsys, monkeypatch):
    good = write_tsv(tmp_path / "good.tsv", sentiment_rows(1))
    (tmp_path / "ckpt").mkdir()
    before = snapshot(existing_run)
    code, err = call_main("train", ["--overwrite", f"data.train_file={good}", f"data.dev_file={good}",
                                    f"output_dir={existing_run}", f"model.checkpoint={tmp_path / 'ckpt'}"],
                          capsys, monkeypatch)
    check_error(code, err, r"checkpoint directory \S*/ckpt has no config\.json$")
    assert snapshot(existing_run) == before


@pytest.mark.parametrize("text, pattern", [
    ("name: x\ntrain:\n  epocs: 2\n", r"unknown config key 'train\.epocs'; did you mean train\.epochs\?$"),
    ("data: [1, 2\n", r"/bad\.yaml: not valid YAML: "),
    ("- a\n", r"/bad\.yaml: the top level must be a mapping of sections$"),
    ("train:\n  batch_size: big\n", r"config key train\.batch_size: expected an integer, got 'big'$"),
])
def test_bad_config_file(text, pattern, tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, err = call_main("train", ["--config", path, f"output_dir={tmp_path / 'run'}"], capsys, monkeypatch)
    check_error(code, err, pattern)
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path, capsys, monkeypatch):
    code, err = call_main("train", ["--config", tmp_path / "nope.yaml"], capsys, monkeypatch)
    check_error(code, err, r"^error: config file not found: \S*/nope\.yaml$")


def test_existing_run_dir_is_refused(tmp_path, existing_run, capsys, monkeypatch):
    good = write_tsv(tmp_path / "good.tsv", sentiment_rows(1))
    before = snapshot(existing_run)
    code, err = call_main("train", [f"data.train_file={good}", f"data.dev_file={good}",
                                    f"output_dir={existing_run}"], capsys, monkeypatch)
    check_error(code, err, rf"run directory {re.escape(str(existing_run))} already exists; "
                           r"pass --overwrite to replace it or --resume to continue it$")
    assert snapshot(existing_run) == before


def test_output_dir_that_is_a_file(tmp_path, capsys, monkeypatch):
    good = write_tsv(tmp_path / "good.tsv", sentiment_rows(1))
    (tmp_path / "afile").write_text("not a directory")
    code, err = call_main("train", ["--overwrite", f"data.train_file={good}", f"data.dev_file={good}",
                                    f"output_dir={tmp_path / 'afile'}"], capsys, monkeypatch)
    check_error(code, err, r"config key output_dir: \S*/afile exists and is not a directory$")
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_empty_run_name_cannot_select_the_runs_folder(tmp_path, capsys, monkeypatch):
    # name= would make the run directory runs/ itself: --overwrite must not get to delete every run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "marker.txt").write_text("keep")
    code, err = call_main("train", ["--overwrite", "name="], capsys, monkeypatch)
    check_error(code, err, r"config key name: '' must be a plain folder name under runs/")
    assert (tmp_path / "runs" / "other" / "marker.txt").read_text() == "keep"


# --- evaluate and predict -------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tiny_checkpoint, tmp_path_factory) -> Path:
    """A run directory as training leaves it (untrained tiny classifier): model/, config, labels."""
    from transformers import BertTokenizerFast, TFBertForSequenceClassification

    from tfllm.config import load_config, save_config
    from tfllm.data.labels import LabelMap

    run = tmp_path_factory.mktemp("finished") / "run"
    model = TFBertForSequenceClassification.from_pretrained(tiny_checkpoint, num_labels=2)
    model.save_pretrained(str(run / "model"))
    BertTokenizerFast.from_pretrained(tiny_checkpoint).save_pretrained(str(run / "model"))
    save_config(load_config(None, [f"model.checkpoint={tiny_checkpoint}", "data.max_length=32",
                                   f"output_dir={run}"]), run / "config.yaml")
    LabelMap(("neg", "pos")).save(run / "label_map.json")
    return run


EVAL_CASES = {
    "unseen-label": ({"d.tsv": (GOOD + "so so\tmeh\n").encode()}, [],
                     r"/d\.tsv row 17: label 'meh' was never seen in training"),
    "missing-file": ({}, [], r"data file not found: \S*/d\.tsv$"),
    "missing-label-column": ({"d.tsv": b"text\ty\nhi\tpos\n"}, [], r"/d\.tsv: no column 'label'"),
    "empty-label": ({"d.tsv": b"text\tlabel\nhi\t\n"}, [], r"/d\.tsv row 1: missing label"),
    "malformed-tsv": ({"d.tsv": b"text\tlabel\nhi\tpos\tx\n"}, [], r"/d\.tsv: malformed TSV"),
    "non-utf8": ({"d.tsv": b"text\tlabel\nh\xe9\tpos\n"}, [], r"/d\.tsv line 2: not valid UTF-8"),
    "unknown-column-option": ({"d.tsv": GOOD.encode()}, ["--text-column", "sentence"],
                              r"/d\.tsv: no column 'sentence'"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_evaluate_bad_data(case, finished_run, tmp_path, capsys, monkeypatch):
    files, extra, pattern = EVAL_CASES[case]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    before = snapshot(finished_run)
    code, err = call_main("evaluate", [finished_run, "--data", tmp_path / "d.tsv", *extra], capsys, monkeypatch)
    check_error(code, err, pattern)
    assert snapshot(finished_run) == before  # no eval/ folder half-written


def test_evaluate_and_predict_on_a_dir_that_is_not_a_run(tmp_path, capsys, monkeypatch):
    write_tsv(tmp_path / "d.tsv", sentiment_rows(1))
    code, err = call_main("evaluate", [tmp_path, "--data", tmp_path / "d.tsv"], capsys, monkeypatch)
    check_error(code, err, rf"^error: {re.escape(str(tmp_path))} is not a finished tfllm run")
    code, err = call_main("predict", [tmp_path / "nothing", "a text"], capsys, monkeypatch)
    check_error(code, err, r"run directory not found: \S*/nothing$")


@pytest.mark.parametrize("args, pattern", [
    ([], r"^error: nothing to predict: give texts or --input FILE$"),
    (["fine", "  "], r"^error: text 2 is empty$"),
    (["--input", "{d}/none.txt"], r"input file not found: \S*/none\.txt$"),
    (["--input", "{d}/gap.txt"], r"/gap\.txt line 2: empty text$"),
    (["--input", "{d}/latin1.txt"], r"/latin1\.txt line 1: not valid UTF-8"),
    (["--precision", "fp16", "fine"], r"^error: --precision 'fp16': choose from float32, bfloat16, auto$"),
])
def test_predict_bad_input(args, pattern, finished_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "gap.txt").write_text("one\n\nthree\n")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    code, err = call_main("predict", [finished_run, *[a.format(d=tmp_path) for a in args]], capsys, monkeypatch)
    check_error(code, err, pattern)


def test_predict_in_bfloat16_gives_the_float32_labels(finished_run, capsys, monkeypatch):
    texts = ["a warm, funny film", "dull and far too long", "fine"]
    rows = {}
    for precision in ("float32", "bfloat16"):
        done = main_in_process("predict", [finished_run, *texts, "--precision", precision], capsys, monkeypatch)
        assert done.returncode == 0, done.stderr
        rows[precision] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["label"] for r in rows["bfloat16"]] == [r["label"] for r in rows["float32"]]
    for a, b in zip(rows["bfloat16"], rows["float32"]):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=0.02)
    assert rows["bfloat16"] != rows["float32"]  # computed in bf16 indeed: the 6-digit probabilities move


# --- the real command line, in subprocesses -------------------------------------------------

def test_cli_train_bad_data_keeps_existing_run(tmp_path, existing_run):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\nhi,pos\nho,neg,extra\n")
    before = snapshot(existing_run)
    result = run_cli("train", "--overwrite", f"data.train_file={bad}", f"output_dir={existing_run}")
    check_error(result.returncode, result.stderr, r"/bad\.csv: malformed CSV: Expected 2 fields in line 3, saw 3$")
    assert snapshot(existing_run) == before


@pytest.mark.parametrize("args, pattern", [
    (["train.learnig_rate=1e-3"], r"^error: unknown config key 'train\.learnig_rate'; did you mean train\.learning_rate\?$"),
    (["--config", "/nonexistent/exp.yaml"], r"^error: config file not found: /nonexistent/exp\.yaml$"),
], ids=["unknown-key", "missing-config"])  # both fail before TensorFlow is imported
def test_cli_train_config_errors(args, pattern, tmp_path):
    result = run_cli("train", *args, f"output_dir={tmp_path / 'run'}")
    check_error(result.returncode, result.stderr, pattern)
    assert not (tmp_path / "run").exists()


def test_train_config_errors_come_before_tensorflow_loads(tmp_path):
    """A mistyped key costs a second: TensorFlow (5-10 s to import) is not loaded yet."""
    program = ("import sys, tfllm.train\n"
               "try:\n    tfllm.train.main(['train.learnig_rate=1', 'output_dir=" + str(tmp_path / "run") + "'])\n"
               "except SystemExit as stop:\n    print(stop.code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr[-2000:]


def test_cli_evaluate_unseen_label(finished_run, tmp_path):
    data = tmp_path / "test.tsv"
    data.write_text(GOOD + "so so\tmeh\n", encoding="utf-8")
    before = snapshot(finished_run)
    result = run_cli("evaluate", finished_run, "--data", data)
    check_error(result.returncode, result.stderr, r"/test\.tsv row 17: label 'meh' was never seen in training")
    assert snapshot(finished_run) == before


# --- known gap ------------------------------------------------------------------------------

def test_checkpoint_without_weights_keeps_existing_run(tiny_checkpoint, tmp_path, existing_run, capsys,
                                                       monkeypatch):
    import shutil

    ckpt = tmp_path / "no_weights"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns("*.h5", "*.safetensors"))
    good = write_tsv(tmp_path / "good.tsv", sentiment_rows(1))
    before = snapshot(existing_run)
    code, err = call_main("train", ["--overwrite", f"data.train_file={good}", f"data.dev_file={good}",
                                    f"output_dir={existing_run}", f"model.checkpoint={ckpt}"], capsys, monkeypatch)
    check_error(code, err, r"checkpoint \S*/no_weights: no tf_model\.h5 or model\.safetensors")
    assert snapshot(existing_run) == before
