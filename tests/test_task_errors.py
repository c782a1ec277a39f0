"""Bad input for the regression, multi-label and token-classification tasks (and class weights):
one ``error:`` line naming the file / row / line / key, a non-zero exit, no traceback, and the
existing run directory byte-identical afterwards."""
import pytest

from test_bad_input import GUARD_CHECKPOINT, call_main, check_error, existing_run, snapshot  # noqa: F401

CONLL_OK = b"Peter B-PER\nvisited O\nParis B-LOC\n\n"
# name -> (task, files {name: bytes}, overrides ({d} = the data folder), error pattern)
CASES = {
    "regression-target-not-a-number": (
        "regression", {"s.tsv": b"text\tlabel\nhi\t1.5\nho\tabc\n"}, [],
        r"/s\.tsv row 2: target 'abc' is not a number"),
    "regression-target-infinite": (
        "regression", {"s.tsv": b"text\tlabel\nhi\t1.5\nho\tinf\n"}, [], r"/s\.tsv row 2: target 'inf' is not a number"),
    "multi-label-empty-set": (
        "multi_label", {"m.jsonl": b'{"text": "hi", "label": ["a"]}\n{"text": "ho", "label": []}\n'}, [],
        r"/m\.jsonl row 2: empty label set"),
    "multi-label-id-out-of-range": (
        "multi_label", {"m.tsv": b"text\tlabel\nhi\t0,1\nho\t7\n", "names.txt": b"joy\nanger\n"},
        ["data.label_names_file={d}/names.txt"], r"/m\.tsv row 2: .*7"),
    "unknown-tag-scheme": (
        "token_classification", {"t.txt": CONLL_OK}, ["data.tag_scheme=iob3"],
        r"config key data.tag_scheme: 'iob3' is not one of .*did you mean 'iob2'"),
    "invalid-iob2": (
        "token_classification", {"t.txt": b"Peter B-PER\nvisited O\nSmith I-PER\n\n"}, [],
        r"/t\.txt line 3: .*I-PER"),
    "invalid-bioes": (
        "token_classification", {"t.txt": b"Peter B-PER\nSmith B-PER\n\n"}, ["data.tag_scheme=bioes"],
        r"/t\.txt line 2: "),
    "conll-wrong-columns": (
        "token_classification", {"t.txt": b"Peter NNP B-PER\nvisited VBD O\nParis B-LOC\n\n"}, [],
        r"/t\.txt line 3: expected 3 columns"),
    "sentence-without-tokens": (
        "token_classification", {"t.jsonl": b'{"tokens": ["Peter"], "tags": ["B-PER"]}\n{"tokens": [], "tags": []}\n'},
        [], r"/t\.jsonl line 2: .*no tokens"),
    "class-weight-unknown-label": (
        "classification", {"c.tsv": b"text\tlabel\nhi\tpos\nho\tneg\n"}, ["train.class_weights={{posi: 2.0}}"],
        r"config key train.class_weights: unknown label 'posi'"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_task_input_errors_are_one_line_and_touch_nothing(name, tmp_path, existing_run, capsys, monkeypatch):
    task, files, extra, pattern = CASES[name]
    data = tmp_path / "data"
    data.mkdir()
    for file, content in files.items():
        (data / file).write_bytes(content)
    train = next(data / f for f in files if f != "names.txt")
    before = snapshot(existing_run)
    args = [f"train.task={task}", f"data.train_file={train}", f"data.dev_file={train}", f"output_dir={existing_run}",
            GUARD_CHECKPOINT.replace("/nonexistent/guard", "packaged:minilm-l6"), "--overwrite",
            *[e.format(d=data) for e in extra]]
    code, stderr = call_main("train", args, capsys, monkeypatch)
    check_error(code, stderr, pattern)
    assert snapshot(existing_run) == before
