"""The shared task harness: every registered task, on a tiny BERT and small data made here, goes
through the same life: train, resume a killed run to the same weights, evaluate a labelled file,
predict, export to TFLite and SavedModel, load the exports back and agree with Keras.

Adding a task = one module in tfllm/tasks, one config, and one ``TaskCase`` below.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import PERSUASION, assert_same_run, sentiment_rows, simulate_kill, write_tsv
from tfllm.config import load_config
from tfllm.tasks import TASKS

PAIRS = [("a man plays a flute", "a man plays a flute", "5.0"), ("a man plays a flute", "a man plays music", "3.8"),
         ("a woman slices an onion", "a woman cuts an onion", "4.6"), ("a dog runs in a park", "a cat sleeps", "0.4"),
         ("the market fell today", "stocks dropped on monday", "3.2"), ("a child rides a horse", "it is raining", "0.0"),
         ("two men play chess", "two men are playing chess", "4.8"), ("a girl sings", "a plane takes off", "0.2")]
EMOTIONS = [("thank you so much, i love it", "gratitude,love"), ("this is awful and i am angry", "anger"),
            ("wow, i did not expect that at all", "surprise"), ("thanks, that was a lovely surprise", "gratitude,surprise"),
            ("i hate waiting, so annoying", "anger"), ("love this, thanks a lot", "love,gratitude")]
PEOPLE = [("Peter", "Smith"), ("Anna", "Berg"), ("John", "Olsen"), ("Maria", "Lopez")]
PLACES = ["Paris", "Berlin", "Madrid", "Oslo"]


def ner_sentences(repeat: int):
    """CoNLL lines: '<first> <last> visited <place> with Acme Corp .' in IOB2."""
    lines = []
    for i in range(repeat):
        (first, last), place = PEOPLE[i % 4], PLACES[(i // 4) % 4]
        words = [(first, "B-PER"), (last, "I-PER"), ("visited", "O"), (place, "B-LOC"), ("with", "O"),
                 ("Acme", "B-ORG"), ("Corp", "I-ORG"), (".", "O")]
        lines += [f"{w} X X {t}" for w, t in words] + [""]
    return "\n".join(lines) + "\n"


@dataclass
class TaskCase:
    """One task's small data, extra overrides and what its predictions must look like."""
    task: str
    files: Callable[[Path], tuple[Path, Path]]
    overrides: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    check_row: Callable[[dict], None] = lambda row: None


def sentiment_files(root):
    return write_tsv(root / "train.tsv", sentiment_rows(4)), write_tsv(root / "dev.tsv", sentiment_rows(1))


def pair_files(root):
    header = ("sentence1", "sentence2", "score")
    return write_tsv(root / "train.tsv", PAIRS * 4, header), write_tsv(root / "dev.tsv", PAIRS, header)


def emotion_files(root):
    return write_tsv(root / "train.tsv", EMOTIONS * 5), write_tsv(root / "dev.tsv", EMOTIONS)


def ner_files(root):
    (root / "train.txt").write_text(ner_sentences(24))
    (root / "dev.txt").write_text(ner_sentences(8))
    return root / "train.txt", root / "dev.txt"


def corpus_files(root):
    return PERSUASION, None


def check_classification(row):
    assert row["label"] in ("pos", "neg") and sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4)


def check_regression(row):
    assert isinstance(row["score"], float) and row["text_pair"]


def check_multi_label(row):
    assert set(row["probabilities"]) == {"anger", "gratitude", "love", "surprise"}
    assert set(row["labels"]) <= set(row["probabilities"])


def check_entities(row):
    for entity in row["entities"]:
        assert row["text"][entity["start"]:entity["end"]] == entity["text"]
        assert entity["entity"] in ("PER", "LOC", "ORG")


CASES = {
    "classification": TaskCase("classification", sentiment_files, [], ["a wonderful warm film"], check_classification),
    "regression": TaskCase("regression", pair_files,
                           ["data.text_column=sentence1", "data.text_pair_column=sentence2", "data.label_column=score"],
                           ["a man plays a flute\ta man plays music"], check_regression),
    "multi_label": TaskCase("multi_label", emotion_files, [], ["thanks, i love it"], check_multi_label),
    "token_classification": TaskCase("token_classification", ner_files, ["data.stride=4"],
                                     ["Anna Berg visited Oslo with Acme Corp."], check_entities),
    "token_classification_crf": TaskCase("token_classification", ner_files, ["data.stride=4", "model.crf=true"],
                                         ["Anna Berg visited Oslo with Acme Corp."], check_entities),
    "masked_lm": TaskCase("masked_lm", corpus_files,
                          ["data.dev_file=null", "data.max_documents=60", "data.dev_fraction=0.2",
                           "data.whole_word_masking=true"],  # resume re-draws the same whole-word masks
                          ["she was [MASK] to see him ."], lambda row: len(row["predictions"]) == 5),
}


def test_every_registered_task_has_a_case():
    assert {case.task for case in CASES.values()} == set(TASKS)


def overrides(case: TaskCase, checkpoint: str, train: Path, dev, out: Path, *extra: str) -> list:
    return [f"train.task={case.task}", f"model.checkpoint={checkpoint}", f"data.train_file={train}",
            *([f"data.dev_file={dev}"] if dev else []), f"output_dir={out}", "train.max_steps=8",
            "train.batch_size=8", "train.learning_rate=2e-3", "train.warmup_ratio=0", "train.log_every=2",
            "train.eval_every=4", "train.checkpoint_every=4", "data.max_length=24", *case.overrides, *extra]


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tiny_checkpoint, tmp_path_factory):
    """``(case, run_dir, dev file)`` of one task trained for 8 steps on the tiny BERT."""
    from tfllm.train import run_training

    case = CASES[request.param]
    root = tmp_path_factory.mktemp(case.task)
    train, dev = case.files(root)
    run_dir = run_training(load_config(None, overrides(case, tiny_checkpoint, train, dev, root / "run")))
    return case, run_dir, dev, (train, tiny_checkpoint, root)


def assert_same_rows(got, expected, atol: float = 1e-4) -> None:
    """The same rows; their numbers (rounded to 6 places) within ``atol``: another backend's
    float error can flip the last rounded digit (seen: a score 0.1936 against 0.193601)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), (got, expected)
        for key in expected:
            assert_same_rows(got[key], expected[key], atol)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (got, expected)
        for a, b in zip(got, expected):
            assert_same_rows(a, b, atol)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=atol)
    else:
        assert got == expected


def run_task_test(case, run_dir, dev, setup, capsys):
    """Every task's life after training; see the module docstring."""
    from tfllm.export import export
    from tfllm.inference import Predictor
    from tfllm.predict import main as predict_main
    from tfllm.train import run_training

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["dev"] and metrics["history"]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["task"] == case.task
    if "model.crf=true" in case.overrides:  # the CRF's transitions are saved with the model
        crf = json.loads((run_dir / "model" / "crf.json").read_text())
        assert np.asarray(crf["transitions"]).shape == (7, 7) and np.abs(crf["transitions"]).sum() > 0

    # resume: a run killed after its step-4 checkpoint ends with the uninterrupted run's weights
    train, checkpoint, root = setup
    killed = simulate_kill(run_dir, root / "killed", 4)
    resumed = run_training(load_config(killed / "config.yaml", [f"output_dir={killed}"]), resume=True)
    predictor = Predictor.load(run_dir)
    assert_same_run(type(predictor.run.hf_model), run_dir, resumed)

    # predict: the task's rows, through the CLI too
    texts, pairs = [t.split("\t")[0] for t in case.texts], None
    if "\t" in case.texts[0]:
        pairs = [t.split("\t")[1] for t in case.texts]
    rows = predictor.predict(texts, pairs)
    assert rows
    for row in rows:
        case.check_row(row)
    args = ["--fill-mask", case.texts[0]] if case.task == "masked_lm" else [case.texts[0]]
    capsys.readouterr()
    predict_main([str(run_dir), *args])  # the CLI in-process (its subprocess runs: test_end_to_end)
    cli_row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert cli_row.keys() == rows[0].keys() and cli_row["text"] == rows[0]["text"]
    if case.task == "masked_lm":
        return

    # evaluate a labelled file: the task's metrics and report files
    result = predictor.evaluate(str(dev), root / "eval")
    assert result["examples"] > 0 and (root / "eval" / "metrics.json").is_file()

    # TFLite: same outputs as Keras, each text alone at its own length and (but for a CRF
    # tagger's batch-1 export) in padded groups of 64
    keras = predictor.logits(texts, pairs)
    [path] = export(run_dir, "tflite", "none")
    lite = Predictor.load(path)
    assert lite.task.name == case.task
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in lite.logits(texts, pairs)]),
                               np.concatenate([np.ravel(x) for x in keras]), atol=1e-4)
    lite.backend.batch_texts = True
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in lite.logits(texts, pairs)]),
                               np.concatenate([np.ravel(x) for x in keras]), atol=1e-4)
    lite.backend.batch_texts = False
    assert_same_rows(lite.predict(texts, pairs), rows)

    # SavedModel: the token-id model behind the same Predictor gives Keras' rows; the raw-string
    # model's signature gives the task's serving outputs
    import tensorflow as tf

    saved, ids = export(run_dir, "saved_model")
    served = Predictor.load(ids)
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in served.logits(texts, pairs)]),
                               np.concatenate([np.ravel(x) for x in keras]), atol=1e-4)
    assert_same_rows(served.predict(texts, pairs), rows)
    serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
    inputs = {"text": tf.constant(texts)} | ({"text_pair": tf.constant(pairs)} if pairs else {})
    outputs = serve(**inputs)
    assert outputs and all(v.shape[0] == len(texts) for v in outputs.values())


def test_task_lifecycle(trained, capsys, monkeypatch):
    case, run_dir, dev, setup = trained
    monkeypatch.setattr("tfllm.predict.setup_logging", lambda *a, **k: None)
    run_task_test(case, run_dir, dev, setup, capsys)


def test_multi_label_head_starts_at_the_label_priors(tiny_checkpoint, tmp_path):
    """A new multi-label head predicts each label's training base rate before any step."""
    from tfllm.tasks import task_for

    train, dev = emotion_files(tmp_path)
    case = CASES["multi_label"]
    task = task_for(load_config(None, overrides(case, tiny_checkpoint, train, dev, tmp_path / "run")))
    data = task.load_data()
    model, _ = task.build_model(data)
    prior = data.train.encoded.labels.mean(axis=0)
    np.testing.assert_allclose(model.bert.classifier.bias.numpy(), np.log(prior / (1 - prior)), rtol=1e-5)
