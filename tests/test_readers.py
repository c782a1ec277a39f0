"""Readers, label maps and splits on small files written here, a local Hugging Face dataset, and
a cheap smoke check of the real data sets in ../shared/data (skipped when absent)."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfllm.config import DataConfig
from tfllm.data.labels import LabelMap
from tfllm.data.readers import Examples, frame_to_examples, read_examples, read_table
from tfllm.data.splits import load_labelled_splits, stratified_split
from tfllm.errors import TfllmError

from conftest import SHARED_DATA, sentiment_rows, write_tsv


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def data_cfg(**kwargs) -> DataConfig:
    return DataConfig(**{"train_file": None, "dev_file": None, **kwargs})


# --- formats --------------------------------------------------------------------------------

def test_csv_with_quoted_commas_and_quotes(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"hello, world",pos\n"she said ""hi""",neg\nplain,pos\n')
    frame = read_table(path)
    assert list(frame.columns) == ["text", "label"]
    ex = read_examples(str(path))
    assert ex.texts == ["hello, world", 'she said "hi"', "plain"]
    assert ex.labels == ["pos", "neg", "pos"] and ex.pairs is None and len(ex) == 3


def test_tsv_quotes_are_text_as_in_glue(tmp_path):
    # GLUE TSVs are unquoted: a quote (even a leading one, or an unbalanced one) is part of the text
    path = write(tmp_path / "d.tsv", 'sentence\tlabel\n"the film" is great\t1\n'
                                     'it \'s a "charming journey \t1\n"\t0\n'
                                     'a, b, c\t0\n')
    ex = read_examples(str(path), text_column="sentence")
    assert ex.texts == ['"the film" is great', 'it \'s a "charming journey', '"', "a, b, c"]
    assert ex.labels == ["1", "1", "0", "0"]


def test_jsonl_typed_values_and_blank_lines(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "one", "label": 1, "id": 7}\n\n'
                                       '{"text": "two", "label": 0}\n  \n{"text": "three", "label": 1}\n')
    ex = read_examples(str(path))
    assert ex.texts == ["one", "two", "three"] and ex.labels == ["1", "0", "1"]


@pytest.mark.parametrize("payload", [
    [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}],
    {"data": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]},
    {"text": ["a", "b"], "label": ["x", "y"]},
], ids=["records", "wrapped-records", "columns"])
def test_json_layouts(tmp_path, payload):
    path = write(tmp_path / "d.json", json.dumps(payload))
    ex = read_examples(str(path))
    assert ex.texts == ["a", "b"] and ex.labels == ["x", "y"]


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a b", "c d", "e f"], "label": [2, 10, 1]}).to_parquet(path)
    ex = read_examples(str(path))
    assert ex.texts == ["a b", "c d", "e f"] and ex.labels == ["2", "10", "1"]


@pytest.mark.parametrize("column", ["text", "label"])
def test_parquet_nullable_missing_value_is_reported(tmp_path, column):
    # nullable dtypes come back as pd.NA, which must not become the text/label "<NA>"
    path = tmp_path / "d.parquet"
    frame = pd.DataFrame({"text": pd.array(["a", "b", "c"], dtype="string"),
                          "label": pd.array([1, 0, 1], dtype="Int64")})
    frame.loc[1, column] = pd.NA
    frame.to_parquet(path)
    with pytest.raises(TfllmError, match=r"d\.parquet row 2: (empty text|missing label) in column"):
        read_examples(str(path))


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_utf8_bom_header(tmp_path, suffix, sep):
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + f"text{sep}label\nhello{sep}pos\n".encode())
    assert list(read_table(path).columns) == ["text", "label"]
    assert read_examples(str(path)).texts == ["hello"]


def test_headerless_tsv_with_column_names(tmp_path):
    path = write(tmp_path / "raw.tsv", "s1\t0\tfirst text\ns2\t1\tsecond text\n")
    frame = read_table(path, has_header=False, column_names=["id", "label", "text"])
    assert list(frame.columns) == ["id", "label", "text"] and len(frame) == 2  # first line is data
    ex = read_examples(str(path), has_header=False, column_names=["id", "label", "text"])
    assert ex.texts == ["first text", "second text"] and ex.labels == ["0", "1"]
    cfg = data_cfg(train_file=str(path), has_header=False, column_names=["id", "label", "text"],
                   dev_fraction=0.5)
    assert len(load_labelled_splits(cfg).train) == 1


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_extra_field_in_first_row_is_an_error_not_a_column_shift(tmp_path, suffix, sep):
    # pandas would silently make column 1 the index and shift text/label by one column
    path = write(tmp_path / f"x{suffix}", f"text{sep}label\nhi{sep}pos{sep}oops\nho{sep}neg\n")
    with pytest.raises(TfllmError, match=r"malformed (CSV|TSV): Expected 2 fields in line 2, saw 3$"):
        read_table(path)
    names = write(tmp_path / f"n{suffix}", f"1{sep}pos{sep}hi\n")
    with pytest.raises(TfllmError, match=r"Expected 2 fields in line 1, saw 3$"):
        read_table(names, has_header=False, column_names=["text", "label"])


def test_empty_trailing_fields_are_tolerated(tmp_path):
    path = write(tmp_path / "t.tsv", "text\tlabel\nhi\tpos\t\nho\tneg\t\n")
    ex = read_examples(str(path))
    assert ex.texts == ["hi", "ho"] and ex.labels == ["pos", "neg"]


def test_headerless_without_names_has_numbered_columns(tmp_path):
    path = write(tmp_path / "raw.tsv", "a\t0\nb\t1\n")
    assert list(read_table(path, has_header=False).columns) == ["0", "1"]
    with pytest.raises(TfllmError, match=r"no column 'text' \(columns: 0, 1\)"):
        read_examples(str(path), has_header=False)


def test_explicit_format_overrides_extension(tmp_path):
    path = write(tmp_path / "data.dat", "text\tlabel\nhi\tpos\n")
    with pytest.raises(TfllmError, match="cannot tell the format from the extension; set data.format"):
        read_examples(str(path))
    assert read_examples(str(path), fmt="tsv").texts == ["hi"]


def test_txt_one_text_per_line_without_labels(tmp_path):
    path = write(tmp_path / "lines.txt", "first line\nsecond line\n")
    ex = read_examples(str(path), label_column="label", require_labels=False)
    assert ex.texts == ["first line", "second line"] and ex.labels is None


def test_text_pair_and_values_are_stripped(tmp_path):
    path = write(tmp_path / "p.tsv", "a\tb\ty\n  first  \tsecond \t 1 \nthird\tfourth\t0\n")
    ex = read_examples(str(path), text_column="a", text_pair_column="b", label_column="y")
    assert ex.texts == ["first", "third"] and ex.pairs == ["second", "fourth"] and ex.labels == ["1", "0"]
    assert ex.subset([1]).pairs == ["fourth"]


def test_builtin_data():
    ex = read_examples("builtin:sentiment/train.tsv")
    assert len(ex) == 400 and Counter(ex.labels) == {"negative": 200, "positive": 200}
    with pytest.raises(TfllmError, match="data file not found: builtin:sentiment/nope.tsv"):
        read_examples("builtin:sentiment/nope.tsv")


def test_frame_to_examples_integral_float_labels_and_optional_labels():
    frame = pd.DataFrame({"text": ["a", "b"], "label": [1.0, 0.0]})
    assert frame_to_examples(frame, "f", "text", label_column="label").labels == ["1", "0"]
    unlabelled = frame_to_examples(frame[["text"]], "f", "text", label_column="label", require_labels=False)
    assert unlabelled.labels is None
    with pytest.raises(TfllmError, match="f: no column 'label'"):
        frame_to_examples(frame[["text"]], "f", "text", label_column="label")


# --- labels ---------------------------------------------------------------------------------

def test_label_order_numeric_and_text():
    assert LabelMap.from_labels(["10", "2", "1", "2"]).names == ("1", "2", "10")
    assert LabelMap.from_labels(["-1", "0", "1"]).names == ("-1", "0", "1")
    assert LabelMap.from_labels(["pos", "neg", "neutral"]).names == ("neg", "neutral", "pos")
    assert LabelMap.from_labels(["10", "2", "b"]).names == ("10", "2", "b")  # mixed: as text


def test_label_names_fix_the_order():
    label_map = LabelMap.from_labels(["neg", "pos"], names=["pos", "neg"])
    assert label_map.names == ("pos", "neg")
    assert label_map.encode(["neg", "pos", "neg"], "s").tolist() == [1, 0, 1]
    assert LabelMap.from_labels(["1"], names=[0, 1]).names == ("0", "1")


def test_label_map_errors_and_round_trip(tmp_path):
    with pytest.raises(TfllmError, match="no labels in the training data"):
        LabelMap.from_labels([])
    with pytest.raises(TfllmError, match=r"data.label_names: 'a' listed more than once"):
        LabelMap.from_labels(["a"], names=["a", "b", "a"])
    label_map = LabelMap(("neg", "pos"))
    with pytest.raises(TfllmError, match=r"dev.tsv row 3: label 'meh' was never seen in training "
                                         r"\(known labels: neg, pos\)"):
        label_map.encode(["pos", "neg", "meh"], "dev.tsv")
    label_map.save(tmp_path / "label_map.json")
    assert LabelMap.load(tmp_path / "label_map.json") == label_map
    with pytest.raises(TfllmError, match="label map not found"):
        LabelMap.load(tmp_path / "none.json")


# --- splits ---------------------------------------------------------------------------------

def imbalanced(n_pos=80, n_neg=20) -> Examples:
    labels = ["pos"] * n_pos + ["neg"] * n_neg
    return Examples([f"text {i}" for i in range(len(labels))], None, labels, "train.tsv")


def test_stratified_split_keeps_class_balance():
    examples = imbalanced()
    train, dev = stratified_split(examples, 0.25, seed=0)
    assert len(dev) == 25 and len(train) == 75
    assert Counter(dev.labels) == {"pos": 20, "neg": 5}
    assert Counter(train.labels) == {"pos": 60, "neg": 15}
    assert sorted(train.texts + dev.texts) == sorted(examples.texts)  # a partition
    assert dev.source == "train.tsv (dev split)"
    again, _ = stratified_split(examples, 0.25, seed=0)
    other, _ = stratified_split(examples, 0.25, seed=1)
    assert again.texts == train.texts and other.texts != train.texts


def test_stratified_split_with_a_singleton_class_and_bad_fraction():
    train, dev = stratified_split(imbalanced(9, 1), 0.2, seed=0)  # cannot stratify: plain split
    assert len(train) + len(dev) == 10 and len(dev) == 2
    for fraction in (0, 1, 1.5):
        with pytest.raises(TfllmError, match="data.dev_fraction"):
            stratified_split(imbalanced(), fraction, seed=0)


def test_max_train_examples_is_reproducible_by_seed(tmp_path):
    rows = [(f"example number {i}", "pos" if i % 2 else "neg") for i in range(60)]
    train = write_tsv(tmp_path / "train.tsv", rows)
    dev = write_tsv(tmp_path / "dev.tsv", rows[:6])
    cfg = data_cfg(train_file=str(train), dev_file=str(dev), max_train_examples=20)
    first = load_labelled_splits(cfg, seed=3)
    assert len(first.train) == 20 and len(first.dev) == 6
    assert load_labelled_splits(cfg, seed=3).train.texts == first.train.texts
    assert load_labelled_splits(cfg, seed=4).train.texts != first.train.texts
    order = [t for t, _ in rows]
    assert first.train.texts == sorted(first.train.texts, key=order.index)  # file order is kept
    cfg.max_dev_examples = 4
    assert len(load_labelled_splits(cfg, seed=3).dev) == 4


def test_load_labelled_splits_files_dev_split_and_test(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(4))
    test = write_tsv(tmp_path / "test.tsv", sentiment_rows(1))
    splits = load_labelled_splits(data_cfg(train_file=str(train), test_file=str(test), dev_fraction=0.25))
    assert splits.label_map.names == ("neg", "pos")
    assert len(splits.train) == 48 and len(splits.dev) == 16 and len(splits.test) == 16
    assert Counter(splits.dev.labels) == {"pos": 8, "neg": 8}
    fixed = load_labelled_splits(data_cfg(train_file=str(train), dev_file=str(test),
                                          label_names=["pos", "neg"]))
    assert fixed.label_map.names == ("pos", "neg")


def test_load_labelled_splits_label_errors_name_file_rows(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(1))
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(1) + [("so so", "meh")])
    with pytest.raises(TfllmError, match=r"dev.tsv row 17: label 'meh' was never seen in training"):
        load_labelled_splits(data_cfg(train_file=str(train), dev_file=str(dev)))
    # still the file's row number when the dev set is subsampled
    with pytest.raises(TfllmError, match=r"dev.tsv row 17: label 'meh'"):
        load_labelled_splits(data_cfg(train_file=str(train), dev_file=str(dev), max_dev_examples=3))
    with pytest.raises(TfllmError, match=r"test.tsv row 17: label 'meh' was never seen in training"):
        load_labelled_splits(data_cfg(train_file=str(train), test_file=str(dev.rename(tmp_path / "test.tsv"))))
    with pytest.raises(TfllmError, match=r"train.tsv row 1: label 'pos' is not in config key "
                                         r"data.label_names \(known labels: 0, 1\)"):
        load_labelled_splits(data_cfg(train_file=str(train), label_names=["0", "1"]))


# --- Hugging Face datasets, local only --------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """A DatasetDict (train/validation) and a single Dataset saved to disk, ClassLabel labels."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["positive", "negative"]),
                                  "domain": datasets.ClassLabel(names=["film", "food", "phone"])})

    def make(rows):
        return datasets.Dataset.from_dict({"sentence": [t for t, _ in rows],
                                           "label": [0 if y == "pos" else 1 for _, y in rows],
                                           "domain": [i % 3 for i in range(len(rows))]}, features=features)

    datasets.DatasetDict({"train": make(sentiment_rows(3)), "validation": make(sentiment_rows(1))}
                         ).save_to_disk(str(root / "dict"))
    make(sentiment_rows(2)).save_to_disk(str(root / "single"))
    unlabelled = make(sentiment_rows(1)).cast_column("label", datasets.ClassLabel(names=["positive", "negative"]))
    unlabelled = unlabelled.map(lambda r, i: {"label": -1 if i == 2 else r["label"]}, with_indices=True)
    unlabelled.save_to_disk(str(root / "missing_label"))
    return root


def test_hf_dataset_dict_classlabel_names_become_label_names(hf_dirs):
    cfg = data_cfg(hf_dataset=str(hf_dirs / "dict"), text_column="sentence")
    splits = load_labelled_splits(cfg)
    assert splits.label_map.names == ("positive", "negative")   # ClassLabel order, not sorted
    assert len(splits.train) == 48 and len(splits.dev) == 16
    assert set(splits.train.labels) == {"positive", "negative"}
    assert splits.train.source.endswith("dict[train]") and splits.dev.source.endswith("dict[validation]")
    assert splits.label_map.encode(splits.dev.labels, "dev").tolist()[:2] == [0, 0]


def test_hf_single_dataset_is_the_train_split(hf_dirs):
    cfg = data_cfg(hf_dataset=str(hf_dirs / "single"), text_column="sentence", hf_dev_split=None,
                   dev_fraction=0.25)
    splits = load_labelled_splits(cfg)
    assert splits.label_map.names == ("positive", "negative")
    assert len(splits.train) == 24 and len(splits.dev) == 8
    assert splits.dev.source.endswith("(dev split)")
    # not silently reused as the dev set: asking for another split is an error with a hint
    with pytest.raises(TfllmError, match=r"single saved Dataset is the 'train' split, there is no "
                                         r"split 'validation'; set data.hf_dev_split=null"):
        load_labelled_splits(data_cfg(hf_dataset=str(hf_dirs / "single"), text_column="sentence"))


def test_hf_missing_split_label_column_and_unset_label(hf_dirs):
    with pytest.raises(TfllmError, match=r"no split 'dev' \(splits: train, validation\)"):
        load_labelled_splits(data_cfg(hf_dataset=str(hf_dirs / "dict"), text_column="sentence",
                                      hf_dev_split="dev"))
    with pytest.raises(TfllmError, match=r"dict\[train\]: no column 'text'"):
        load_labelled_splits(data_cfg(hf_dataset=str(hf_dirs / "dict")))
    with pytest.raises(TfllmError, match=r"missing_label\[train\] row 3: missing label in column 'label'"):
        load_labelled_splits(data_cfg(hf_dataset=str(hf_dirs / "missing_label"), text_column="sentence",
                                      hf_dev_split=None))


def test_hf_other_classlabel_column_as_label(hf_dirs):
    # the label map comes from the label column's ClassLabel, not from any other ClassLabel feature
    cfg = data_cfg(hf_dataset=str(hf_dirs / "dict"), text_column="sentence", label_column="domain")
    assert load_labelled_splits(cfg).label_map.names == ("film", "food", "phone")


def test_hf_nonexistent_local_dir_is_one_error(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(TfllmError, match=f"hf dataset {tmp_path / 'none'}"):
        load_labelled_splits(data_cfg(hf_dataset=str(tmp_path / "none")))


# --- the real data sets (cheap smoke checks) ------------------------------------------------

def shared(relative: str) -> str:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared data {relative} is not available")
    return str(path)


def test_real_sst2_dev():
    ex = read_examples(shared("sst2/dev.tsv"), text_column="sentence")
    assert len(ex) == 872 and set(ex.labels) == {"0", "1"}
    assert LabelMap.from_labels(ex.labels).names == ("0", "1")


def test_real_mrpc_dev_bom_and_pairs():
    path = shared("glue_mrpc/dev.tsv")
    assert Path(path).read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_table(Path(path)).columns[0] == "Quality"
    ex = read_examples(path, text_column="#1 String", text_pair_column="#2 String", label_column="Quality")
    assert len(ex) == 408 and len(ex.pairs) == 408 and set(ex.labels) == {"0", "1"}
    assert all(ex.texts) and all(ex.pairs)


def test_real_banking77_test():
    ex = read_examples(shared("banking77/test.csv"), label_column="category")
    assert len(ex) == 3080 and len(set(ex.labels)) == 77
    assert "card_arrival" in ex.labels


def test_real_20newsgroups_test():
    ex = read_examples(shared("20newsgroups/test.jsonl"), label_column="label_name")
    assert len(ex) == 7532 and len(set(ex.labels)) == 20
    numeric = read_examples(shared("20newsgroups/test.jsonl"), label_column="label")
    assert LabelMap.from_labels(numeric.labels).names == tuple(str(i) for i in range(20))
    assert np.mean([len(t) for t in ex.texts]) > 100


def test_several_files_by_glob_or_list_are_read_in_order(tmp_path):
    write_tsv(tmp_path / "part-1.tsv", [("good film", "pos"), ("dull", "neg")])
    write_tsv(tmp_path / "part-2.tsv", [("fine acting", "pos")])
    by_glob = read_examples(str(tmp_path / "part-*.tsv"))
    assert by_glob.texts == ["good film", "dull", "fine acting"] and by_glob.labels == ["pos", "neg", "pos"]
    listed = read_examples(f"{tmp_path / 'part-2.tsv'},{tmp_path / 'part-1.tsv'}")
    assert listed.texts == ["fine acting", "good film", "dull"]
    (tmp_path / "part-3.tsv").write_text("text\tlabel\n\tpos\n", encoding="utf-8")
    with pytest.raises(TfllmError, match=r"part-3\.tsv row \d+: empty text"):  # the file, not the glob
        read_examples(str(tmp_path / "part-*.tsv"))
    with pytest.raises(TfllmError, match="no files match"):
        read_examples(str(tmp_path / "nothing-*.tsv"))
    with pytest.raises(TfllmError, match="data file not found: .*missing.tsv"):
        read_examples(f"{tmp_path / 'part-1.tsv'},{tmp_path / 'missing.tsv'}")
