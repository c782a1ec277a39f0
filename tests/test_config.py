"""load_config: defaults, YAML + overrides, type coercion and one-line errors naming the key."""
from pathlib import Path

import pytest

from tfllm.config import Config, load_config, save_config
from tfllm.errors import TfllmError

from conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write_yaml(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path=None, overrides=None) -> str:
    with pytest.raises(TfllmError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


# --- defaults and precedence ----------------------------------------------------------------

def test_defaults_without_file_or_overrides():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.name == "sentiment_minilm"
    assert cfg.data.train_file == "builtin:sentiment/train.tsv"
    assert cfg.data.format == "auto" and cfg.data.has_header is True
    assert cfg.model.checkpoint == "packaged:minilm-l6"
    assert cfg.train.epochs == 4.0 and cfg.train.max_steps is None
    assert cfg.distribute.strategy == "default"
    assert cfg.run_dir == Path("runs") / "sentiment_minilm"


def test_yaml_then_overrides_then_defaults(tmp_path):
    path = write_yaml(tmp_path, "name: exp\n"
                                "data:\n  text_column: sentence\n  max_length: 64\n"
                                "train:\n  epochs: 3\n  batch_size: 32\n")
    cfg = load_config(path, ["train.epochs=1", "data.max_length=48", "output_dir=out/x"])
    assert cfg.name == "exp"                       # from the file
    assert cfg.data.text_column == "sentence"      # from the file
    assert cfg.train.batch_size == 32              # from the file
    assert cfg.train.epochs == 1.0                 # override beats the file
    assert cfg.data.max_length == 48               # override beats the file
    assert cfg.data.label_column == "label"        # default (section given, key not)
    assert cfg.model == Config().model             # default (section not given)
    assert cfg.run_dir == Path("out/x")


def test_later_override_wins_and_empty_yaml_is_defaults(tmp_path):
    path = write_yaml(tmp_path, "# only a comment\n")
    cfg = load_config(path, ["train.seed=1", "train.seed=2"])
    assert cfg.train.seed == 2
    assert cfg.data == Config().data


def test_section_null_in_yaml_keeps_defaults(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "model:\ntrain:\n  epochs: 2\n"))
    assert cfg.model == Config().model and cfg.train.epochs == 2.0


# --- coercion -------------------------------------------------------------------------------

def test_int_becomes_float_for_float_fields(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "train:\n  epochs: 2\n  learning_rate: 1\n"))
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert isinstance(cfg.train.learning_rate, float)
    assert isinstance(load_config(None, ["train.epochs=3"]).train.epochs, float)


@pytest.mark.parametrize("text", ["1e-5", "1.0e-5", "0.00001"])
def test_scientific_float_strings(tmp_path, text):
    # YAML 1.1 reads "1e-5" (no dot) as a string: it must still become a float, in a file or override
    assert load_config(None, [f"train.learning_rate={text}"]).train.learning_rate == pytest.approx(1e-5)
    cfg = load_config(write_yaml(tmp_path, f"train:\n  learning_rate: {text}\n"))
    assert cfg.train.learning_rate == pytest.approx(1e-5)


def test_integral_float_becomes_int_and_decimal_ints_stay_decimal():
    assert load_config(None, ["train.batch_size=8.0"]).train.batch_size == 8
    assert load_config(None, ["train.seed=010"]).train.seed == 10   # not YAML 1.1 octal
    assert load_config(None, ["train.seed=-3"]).train.seed == -3


@pytest.mark.parametrize("override, expected", [
    ("data.label_names=[0, 1]", ["0", "1"]),
    ("data.label_names=neg,pos", ["neg", "pos"]),
    ("data.label_names=[negative, positive, neutral]", ["negative", "positive", "neutral"]),
    ("data.column_names=id, text , label", ["id", "text", "label"]),
])
def test_lists_from_overrides(override, expected):
    cfg = load_config(None, [override])
    key = override.split("=")[0].split(".")[1]
    assert getattr(cfg.data, key) == expected


def test_lists_from_yaml(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "data:\n  label_names: [0, 1]\n  column_names:\n    - a\n    - b\n"))
    assert cfg.data.label_names == ["0", "1"] and cfg.data.column_names == ["a", "b"]


def test_optional_bool_and_string_values():
    cfg = load_config(None, ["train.max_steps=null", "train.max_grad_norm=~", "data.has_header=false",
                             "train.jit_compile=true", "name=007", "data.dev_file=null",
                             "model.hidden_dropout=0"])
    assert cfg.train.max_steps is None and cfg.train.max_grad_norm is None
    assert cfg.data.has_header is False and cfg.train.jit_compile is True
    assert cfg.name == "007"                       # the text, not the YAML integer 7
    assert cfg.data.dev_file is None
    assert cfg.model.hidden_dropout == 0.0


def test_value_with_equals_sign_and_spaces():
    cfg = load_config(None, ["data.text_column=a=b", " name =my run"])
    assert cfg.data.text_column == "a=b" and cfg.name == "my run"


# --- unknown keys ---------------------------------------------------------------------------

@pytest.mark.parametrize("override, key, suggestion", [
    ("outptu_dir=x", "'outptu_dir'", "did you mean output_dir?"),
    ("train.learnig_rate=1e-3", "'train.learnig_rate'", "did you mean train.learning_rate?"),
    ("data.text_colum=sentence", "'data.text_colum'", "did you mean data.text_column?"),
    ("trian.epochs=1", "'trian'", "did you mean train?"),
    ("model.checkpont=x", "'model.checkpont'", "did you mean model.checkpoint?"),
])
def test_unknown_key_suggests_close_match(override, key, suggestion):
    message = error_of(None, [override])
    assert message.startswith(f"unknown config key {key}") and suggestion in message


def test_unknown_key_without_close_match_lists_known_keys():
    message = error_of(None, ["train.zzzz=1"])
    assert "'train.zzzz'" in message and "known keys:" in message and "learning_rate" in message


def test_unknown_key_in_yaml_file(tmp_path):
    message = error_of(write_yaml(tmp_path, "train:\n  epocs: 3\n"))
    assert message == "unknown config key 'train.epocs'; did you mean train.epochs?"


# --- wrong types ----------------------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=abc", "config key train.batch_size: expected an integer, got 'abc'"),
    ("train.batch_size=2.5", "config key train.batch_size: expected an integer, got 2.5"),
    ("train.batch_size=true", "config key train.batch_size: expected an integer, got True"),
    ("train.learning_rate=fast", "config key train.learning_rate: expected a number, got 'fast'"),
    ("train.epochs=[1]", "config key train.epochs: expected a number, got [1]"),
    ("data.has_header=maybe", "config key data.has_header: expected true/false, got 'maybe'"),
    ("data.has_header=1", "config key data.has_header: expected true/false, got 1"),
    ("data.label_names={a: 1}", "config key data.label_names: expected a list, got {'a': 1}"),
    ("data.label_names=[[1]]", "config key data.label_names[0]: expected a string, got [1]"),
    ("name=[1, 2]", "config key name: expected a string, got [1, 2]"),
    ("train=3", "config key train: expected a mapping of keys, got 3"),
])
def test_wrong_types_name_the_key(override, expected):
    assert error_of(None, [override]) == expected


def test_dotted_override_into_a_value_is_refused(tmp_path):
    assert error_of(None, ["name.x=1"]).startswith("config key name: is a single value, not a section")
    message = error_of(write_yaml(tmp_path, "name: exp\n"), ["name.x=1"])
    assert message == "override name.x: name is not a section"


def test_wrong_type_in_yaml_file(tmp_path):
    message = error_of(write_yaml(tmp_path, "train:\n  batch_size: big\n"))
    assert message == "config key train.batch_size: expected an integer, got 'big'"


# --- Literal choices ------------------------------------------------------------------------

@pytest.mark.parametrize("override, value", [
    ("data.format=jsonl", "jsonl"), ("train.lr_schedule=cosine", "cosine"),
    ("train.mixed_precision=mixed_bfloat16", "mixed_bfloat16"), ("distribute.strategy=mirrored", "mirrored"),
])
def test_literal_choice_accepted(override, value):
    section, key = override.split("=")[0].split(".")
    assert getattr(getattr(load_config(None, [override]), section), key) == value


def test_literal_unknown_value_lists_choices():
    message = error_of(None, ["data.format=xml"])
    assert message.startswith("config key data.format: 'xml' is not one of ['auto', 'csv', 'tsv',")
    assert "did you mean" not in message


def test_literal_typo_suggests_close_choice():
    assert "(did you mean 'cosine'?)" in error_of(None, ["train.lr_schedule=cosin"])
    assert "(did you mean 'json'?)" in error_of(None, ["data.format=jsonn"])


# --- the file itself and the override syntax ------------------------------------------------

def test_missing_config_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_invalid_yaml(tmp_path):
    path = write_yaml(tmp_path, "data: [1, 2\n")
    assert error_of(path).startswith(f"{path}: not valid YAML: ")


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    path = write_yaml(tmp_path, "- a\n- b\n")
    assert error_of(path) == f"{path}: the top level must be a mapping of sections"


def test_yaml_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert error_of(path).startswith(f"{path}: not valid YAML: ")


def test_override_without_equals():
    assert error_of(None, ["train.epochs"]).startswith("override 'train.epochs' is not of the form key=value")


# --- the shipped configs --------------------------------------------------------------------

def test_configs_dir_is_not_empty():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.data.train_file and cfg.data.text_column and cfg.data.label_column
    # a checkpoint that is packaged, random, or the run another shipped config makes (compression
    # phases start from the fine-tuned run: runs/sst2_minilm is configs/sst2_minilm.yaml's output)
    checkpoint = cfg.model.checkpoint
    assert (checkpoint.startswith("packaged:") or checkpoint == "scratch"
            or (checkpoint.startswith("runs/") and (ROOT / "configs" / f"{checkpoint[5:]}.yaml").is_file()))
    save_config(cfg, tmp_path / "config.yaml")     # what a run directory stores
    assert load_config(tmp_path / "config.yaml") == cfg


def test_default_job_config_file_matches_the_builtin_defaults():
    """`python -m tfllm.train` with no arguments runs exactly configs/sentiment_minilm.yaml."""
    assert load_config(ROOT / "configs" / "sentiment_minilm.yaml") == load_config(None)


def test_a_runs_saved_config_names_local_files_absolutely(tmp_path, monkeypatch):
    """A run's config.yaml keeps working from another directory: local data files, checkpoint
    and teacher become absolute; builtin:, packaged: and hub names stay as they are."""
    from tfllm.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "base").mkdir(parents=True)
    cfg = load_config(None, ["data.train_file=data/a.tsv, data/b*.tsv,builtin:sentiment/train.tsv",
                             "data.dev_file=builtin:sentiment/dev.tsv", "model.checkpoint=runs/base",
                             "compression.distillation.teacher=some-org/some-model"])
    saved = with_absolute_paths(cfg)
    assert saved.data.train_file == (f"{tmp_path}/data/a.tsv,{tmp_path}/data/b*.tsv,"
                                     "builtin:sentiment/train.tsv")
    assert saved.data.dev_file == "builtin:sentiment/dev.tsv" and saved.data.test_file is None
    assert saved.model.checkpoint == str(tmp_path / "runs" / "base")
    assert saved.compression.distillation.teacher == "some-org/some-model"  # not a local path
    assert with_absolute_paths(load_config(None)) == load_config(None)  # packaged + builtin
    assert cfg.data.train_file.startswith("data/a.tsv")  # the caller's config is not changed
