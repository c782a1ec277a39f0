"""Numpy-side pieces of the regression / multi-label / class-weight tasks: metrics, threshold
tuning, label-set parsing and names files (GoEmotions' real files when ../shared/data has them)."""
import math
import re
import warnings
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from tfllm.data.multilabel import (ids_to_names, label_names_from_sets, multi_hot, names_from_file,
                                   parse_label_sets)
from tfllm.errors import TfllmError
from tfllm.metrics import class_weights, multilabel_metrics, regression_metrics, tune_thresholds

from conftest import SHARED_DATA

GOEMOTIONS = SHARED_DATA / "goemotions"


# --- regression -----------------------------------------------------------------------------

def test_regression_metrics_match_hand_values():
    # x - mean: -1.5 -0.5 0.5 1.5; y - mean: -1.5 0.5 -0.5 1.5 -> sum xy = 4, sum x^2 = sum y^2 = 5
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0]))
    assert m["pearson"] == pytest.approx(4 / 5)
    assert m["spearman"] == pytest.approx(4 / 5)  # ranks are the values themselves
    assert m["mse"] == pytest.approx((0 + 1 + 1 + 0) / 4) and m["mae"] == pytest.approx(2 / 4)
    assert m["examples"] == 4


def test_spearman_sees_only_the_order():
    m = regression_metrics([1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0])
    assert m["spearman"] == pytest.approx(1.0) and m["pearson"] < 0.95


def test_regression_metrics_agree_with_scipy_on_random_data():
    rng = np.random.default_rng(0)
    targets = rng.uniform(0, 5, 200)
    predictions = targets + rng.normal(0, 1.0, 200)
    m = regression_metrics(predictions.astype(np.float32)[:, None], targets)  # [n, 1] model output
    p32 = predictions.astype(np.float32).astype(np.float64)
    assert m["pearson"] == pytest.approx(stats.pearsonr(p32, targets)[0], abs=1e-9)
    assert m["spearman"] == pytest.approx(stats.spearmanr(p32, targets)[0], abs=1e-9)
    assert m["mse"] == pytest.approx(np.mean((p32 - targets) ** 2))
    assert m["mae"] == pytest.approx(np.mean(np.abs(p32 - targets)))


@pytest.mark.parametrize("predictions, targets", [([2.5] * 5, [0.0, 1.0, 2.0, 4.0, 5.0]),
                                                  ([0.0, 1.0, 2.0, 4.0, 5.0], [3.0] * 5),
                                                  ([1.0], [2.0])])
def test_constant_predictions_give_zero_correlation_without_warnings(predictions, targets):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = regression_metrics(predictions, targets)
    assert m["pearson"] == 0.0 and m["spearman"] == 0.0 and math.isfinite(m["mse"])


def test_regression_metrics_refuse_mismatched_lengths():
    with pytest.raises(ValueError, match="shape"):
        regression_metrics([1.0, 2.0], [1.0, 2.0, 3.0])


# --- threshold tuning and multi-label metrics -----------------------------------------------

def shy_label_example():
    """Label 0's positives all score 0.3 (negatives 0.1), so 0.5 misses every one; label 1 is
    separated around 0.5; label 2 has no positives."""
    targets = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    probabilities = np.where(targets[:, :1] == 1, 0.3, 0.1)
    probabilities = np.hstack([probabilities, np.where(targets[:, 1:2] == 1, 0.8, 0.2),
                               np.full((6, 1), 0.05)])
    return probabilities, targets


def test_tune_thresholds_finds_the_best_threshold_where_half_is_wrong():
    probabilities, targets = shy_label_example()
    thresholds = tune_thresholds(probabilities, targets)
    # label 0: F1 = 1 for 0.15..0.30, closest to 0.5 is 0.30; label 1: F1 = 1 for 0.25..0.80 and
    # 0.5 itself is among them; label 2 has no positives and keeps 0.5
    assert thresholds.tolist() == pytest.approx([0.30, 0.50, 0.50])
    tuned = multilabel_metrics(probabilities, targets, ["a", "b", "c"], thresholds)
    default = multilabel_metrics(probabilities, targets, ["a", "b", "c"])
    assert tuned["per_label"]["a"]["f1"] == 1.0 and default["per_label"]["a"]["f1"] == 0.0
    assert default["macro_f1"] == pytest.approx(1 / 3) and tuned["macro_f1"] == pytest.approx(2 / 3)
    assert tuned["per_label"]["a"]["threshold"] == pytest.approx(0.3)


def test_tune_thresholds_uses_the_given_grid():
    probabilities, targets = shy_label_example()
    assert tune_thresholds(probabilities, targets, grid=[0.2, 0.9]).tolist() == [0.2, 0.2, 0.5]


def test_multilabel_metrics_on_a_hand_worked_example():
    targets = np.array([[1, 0, 1],
                        [0, 1, 0],
                        [1, 1, 0],
                        [0, 0, 1]])
    probabilities = np.array([[0.9, 0.2, 0.6],    # predicts a, c   (exact match)
                              [0.7, 0.8, 0.1],    # predicts a, b   (a is wrong)
                              [0.4, 0.6, 0.3],    # predicts b      (misses a)
                              [0.1, 0.5, 0.2]])   # predicts b      (0.5 >= 0.5; wrong, misses c)
    m = multilabel_metrics(probabilities, targets, ["a", "b", "c"])
    # per label (tp, fp, fn): a (1, 1, 1), b (2, 1, 0), c (1, 0, 1)
    f1 = {"a": 2 * 1 / (2 * 1 + 1 + 1), "b": 2 * 2 / (2 * 2 + 1 + 0), "c": 2 * 1 / (2 * 1 + 0 + 1)}
    for name, value in f1.items():
        assert m["per_label"][name]["f1"] == pytest.approx(value)
    assert m["per_label"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_label"]["c"]["recall"] == pytest.approx(1 / 2)
    assert [m["per_label"][n]["support"] for n in "abc"] == [2, 2, 2]
    tp, fp, fn = 1 + 2 + 1, 1 + 1 + 0, 1 + 0 + 1
    assert m["micro_precision"] == pytest.approx(tp / (tp + fp))
    assert m["micro_recall"] == pytest.approx(tp / (tp + fn))
    assert m["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["subset_accuracy"] == pytest.approx(1 / 4)
    assert m["hamming_loss"] == pytest.approx((0 + 1 + 1 + 2) / 12)
    assert m["examples"] == 4 and "micro avg" in m["report"] and "   b     0.6667" in m["report"]


def test_multilabel_metrics_refuse_non_binary_targets_and_wrong_names():
    with pytest.raises(ValueError, match="0/1"):
        multilabel_metrics(np.zeros((2, 2)), np.array([[0, 2], [1, 0]]), ["a", "b"])
    with pytest.raises(ValueError, match="names"):
        multilabel_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["a"])


# --- label sets -----------------------------------------------------------------------------

def test_parse_label_sets_reads_json_lists_separators_and_ints():
    values = ['["joy", "love"]', "joy, love ", "[3, 27]", "4,27", 5, ["anger", 2], "joy|love",
              "joy,joy,love,joy", '["b", "a", "b"]']
    assert parse_label_sets(values, "t.tsv") == [
        ["joy", "love"], ["joy", "love"], ["3", "27"], ["4", "27"], ["5"], ["anger", "2"],
        ["joy|love"], ["joy", "love"], ["b", "a"]]
    assert parse_label_sets(["joy|love"], "t.tsv", separator="|") == [["joy", "love"]]


@pytest.mark.parametrize("bad, message", [
    ("", "row 3: empty label set in column 'labels'; every example needs at least one label"),
    ("  ", "row 3: empty label set"),
    (None, "row 3: empty label set"),
    (float("nan"), "row 3: empty label set"),
    ("[]", "row 3: empty label set"),
    ('["joy", "love"', "row 3: malformed JSON list in column 'labels'"),
    ("[1.5]", "row 3: label 1.5 in column 'labels' is not a string or an integer"),
    ('[["joy"]]', "row 3: label ['joy'] in column 'labels' is not a string or an integer"),
    ("[true]", "row 3: label True"),
    ("joy,,love", "row 3: empty label in column 'labels'"),
    ("joy,", "row 3: empty label"),
    ('["joy", " "]', "row 3: empty label"),
    (2.5, "row 3: label cell 2.5"),
], ids=["blank", "spaces", "none", "nan", "empty-list", "bad-json", "float-item", "list-item",
        "bool-item", "doubled-separator", "trailing-separator", "blank-item", "float-cell"])
def test_parse_label_sets_errors_name_the_source_and_row(bad, message):
    with pytest.raises(TfllmError, match="^" + re.escape(f"train.tsv {message}")):
        parse_label_sets(["joy", "anger", bad], "train.tsv", column="labels")


def test_ids_to_names_maps_ids_and_reports_the_valid_range():
    names = ["anger", "joy", "love"]
    assert ids_to_names([["1", "2"], ["0"], ["2", "02"]], names, "d.tsv") == [
        ["joy", "love"], ["anger"], ["love"]]
    with pytest.raises(TfllmError, match=r"^d.tsv row 2: label id 3 is out of range \(valid ids: 0-2"):
        ids_to_names([["1"], ["0", "3"]], names, "d.tsv")
    with pytest.raises(TfllmError, match=r"^d.tsv row 1: label id -1 is out of range"):
        ids_to_names([["-1"]], names, "d.tsv")
    with pytest.raises(TfllmError, match=r"^d.tsv row 1: label 'joy' is not an integer id .*0-2"):
        ids_to_names([["joy"]], names, "d.tsv")


def test_multi_hot_and_label_names():
    sets = parse_label_sets(["joy,love", "anger", '["love"]'], "t.tsv")
    names = label_names_from_sets(sets)
    assert names == ["anger", "joy", "love"]
    y = multi_hot(sets, names, "t.tsv")
    assert y.dtype == np.float32 and y.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 1]]
    with pytest.raises(TfllmError, match=r"^dev.tsv row 2: label 'fear' was never seen in training "
                                         r"\(known labels: anger, joy, love\)$"):
        multi_hot([["joy"], ["joy", "fear"]], names, "dev.tsv")


def test_label_names_sort_numerically_or_keep_the_given_order():
    assert label_names_from_sets([["10", "2"], ["1"]]) == ["1", "2", "10"]
    assert label_names_from_sets([["a"]], given=["b", "a"]) == ["b", "a"]
    with pytest.raises(TfllmError, match="'a' listed more than once"):
        label_names_from_sets([["a"]], given=["a", "b", "a"])


# --- names files ----------------------------------------------------------------------------

@pytest.mark.skipif(not (GOEMOTIONS / "labels.txt").is_file(), reason="GoEmotions not in ../shared/data")
def test_names_from_goemotions_labels_file():
    names = names_from_file(GOEMOTIONS / "labels.txt")  # no final newline in this file
    assert len(names) == 28 and names[0] == "admiration" and names[-1] == "neutral"


@pytest.mark.skipif(not (GOEMOTIONS / "dev.tsv").is_file(), reason="GoEmotions not in ../shared/data")
def test_goemotions_dev_label_sets_match_the_documented_counts():
    names = names_from_file(GOEMOTIONS / "labels.txt")
    rows = [line.split("\t") for line in (GOEMOTIONS / "dev.tsv").read_text("utf-8").splitlines()]
    sets = ids_to_names(parse_label_sets([r[1] for r in rows], "dev.tsv"), names, "dev.tsv")
    y = multi_hot(sets, names, "dev.tsv")
    # SOURCE.txt: 5,426 rows, 6,380 label assignments, rows by #labels 4548/809/62/7
    assert y.shape == (5426, 28) and y.sum() == 6380
    assert Counter(len(s) for s in sets) == {1: 4548, 2: 809, 3: 62, 4: 7}
    assert y[:, names.index("grief")].sum() == 13 and y[:, names.index("neutral")].sum() == 1766


def test_names_from_file_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("joy\nlove\n\n\n", encoding="utf-8")
    assert names_from_file(path) == ["joy", "love"]
    path.write_text("joy\nlove\nanger\nlove\n", encoding="utf-8")
    with pytest.raises(TfllmError, match=r"labels.txt line 4: label name 'love' already on line 2$"):
        names_from_file(path)
    path.write_text("joy\n\nlove\n", encoding="utf-8")
    with pytest.raises(TfllmError, match=r"labels.txt line 2: blank label name$"):
        names_from_file(path)
    path.write_bytes(b"joy\nl\xf6ve\n")
    with pytest.raises(TfllmError, match=r"labels.txt line 2: not valid UTF-8"):
        names_from_file(path)
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TfllmError, match="no label names"):
        names_from_file(path)
    with pytest.raises(TfllmError, match="label names file not found"):
        names_from_file(tmp_path / "missing.txt")


# --- class weights --------------------------------------------------------------------------

def test_balanced_class_weights():
    weights = class_weights(np.array([0] * 6 + [1] * 2), 2, "balanced", ["neg", "pos"])
    assert weights.dtype == np.float32
    assert weights.tolist() == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])  # [0.667, 2.0]
    with pytest.raises(TfllmError, match=r"^config key train.class_weights: 'balanced' cannot weight "
                                         r"label 'neutral': no training examples"):
        class_weights([0, 1, 1], 3, "balanced", ["neg", "pos", "neutral"])


def test_class_weights_by_name_and_their_errors():
    names = ["neg", "pos", "neutral"]
    assert class_weights([0, 1], 3, None, names) is None
    assert class_weights([0, 1], 3, {"pos": 2.5, "neg": 1}, names).tolist() == [1.0, 2.5, 1.0]
    with pytest.raises(TfllmError, match=r"^config key train.class_weights: unknown label 'positive' "
                                         r"\(labels: neg, pos, neutral\)$"):
        class_weights([0, 1], 3, {"positive": 2.0}, names)
    for bad in (0, -1.0, float("nan"), float("inf"), "heavy", True):
        with pytest.raises(TfllmError, match=r"^config key train.class_weights.pos: weight must be "
                                             "a positive finite number"):
            class_weights([0, 1], 3, {"pos": bad}, names)
    with pytest.raises(TfllmError, match="expected 'balanced' or"):
        class_weights([0, 1], 3, "balance", names)
