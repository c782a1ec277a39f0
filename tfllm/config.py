"""Typed experiment configuration: dataclasses loaded from YAML, with ``key=value`` overrides.

    >>> cfg = load_config("configs/sst2_minilm.yaml", ["train.epochs=2", "output_dir=runs/try"])
    >>> cfg.train.epochs
    2.0

Unknown keys and wrong types raise :class:`TfllmError` naming the key (and a close match).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from tfllm import io
from tfllm.data.readers import BUILTIN, spec_parts
from tfllm.errors import TfllmError


@dataclass
class DataConfig:
    """Where the examples come from and how they become batches."""
    train_file: Optional[str] = "builtin:sentiment/train.tsv"  # path, glob, a,b list, builtin:NAME/FILE
    dev_file: Optional[str] = "builtin:sentiment/dev.tsv"     # None: stratified split of train
    test_file: Optional[str] = None
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet", "txt"] = "auto"
    has_header: bool = True
    column_names: Optional[list[str]] = None     # names for header-less files
    text_column: str = "text"
    text_pair_column: Optional[str] = None       # second sentence for pair tasks (MRPC, RTE)
    label_column: str = "label"
    label_names: Optional[list[str]] = None      # fixes the label order; default: sorted train labels
    label_names_file: Optional[str] = None       # one name a line; the data's labels are ids 0..N-1 into it
    label_separator: str = ","                   # multi_label: labels in one cell ("joy,love"; or a JSON list)
    dev_fraction: float = 0.1
    max_train_examples: Optional[int] = None     # take a seeded random subset (quick runs)
    max_dev_examples: Optional[int] = None
    hf_dataset: Optional[str] = None             # Hugging Face dataset name or save_to_disk dir
    hf_config: Optional[str] = None
    hf_train_split: str = "train"
    hf_dev_split: Optional[str] = "validation"
    max_length: int = 128
    bucketing: bool = True                       # batch similar lengths, pad to each batch's longest
    bucket_window: int = 64                      # batches per length-sorting window
    pad_to_multiple_of: Optional[int] = None     # None: 8 with train.jit_compile (fewer shapes), else 1
    # --- masked-LM pretraining (train.task=masked_lm); train_file may be a glob or a,b,c list ---
    corpus_mode: Literal["blocks", "line_by_line"] = "blocks"  # concatenate+chunk, or one doc a sequence
    documents: Literal["line", "blank_line"] = "line"  # a document per line, or blank-line separated
    max_documents: Optional[int] = None          # read only the first N documents (quick runs)
    mlm_probability: float = 0.15                # share of tokens chosen for prediction
    whole_word_masking: bool = False             # choose whole words, never parts of one
    nsp: bool = False                            # next-sentence prediction pairs (50% true next)
    # --- token classification (train.task=token_classification): CoNLL columns or JSONL lists ---
    tag_scheme: Literal["iob1", "iob2", "bioes"] = "iob2"  # of the files; the model predicts IOB2
    token_index: int = 0                         # CoNLL column of the token
    tag_index: int = -1                          # CoNLL column of the tag (-1: the last)
    stride: int = 32                             # word-pieces shared by consecutive windows of a long sentence


@dataclass
class ModelConfig:
    """Which checkpoint to start from and how to adapt it."""
    checkpoint: str = "packaged:minilm-l6"       # packaged:NAME, a local directory, a hub name, or
    #                                              scratch (masked_lm only: random initialisation)
    hidden_dropout: Optional[float] = None       # None keeps the checkpoint's value
    attention_dropout: Optional[float] = None
    classifier_dropout: Optional[float] = None
    freeze_embeddings: bool = False
    freeze_layers: int = 0                       # freeze the bottom k encoder layers
    # --- masked-LM from scratch (model.checkpoint=scratch): sizes from a preset, then explicit ---
    preset: Optional[Literal["tiny", "mini", "small", "medium", "base"]] = None
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    num_heads: Optional[int] = None
    intermediate_size: Optional[int] = None      # default 4 x hidden_size
    vocab_size: Optional[int] = None             # train a WordPiece vocabulary of this size on the corpus
    tokenizer: Optional[str] = None              # else reuse this checkpoint's tokenizer (default packaged)
    crf: bool = False                            # token_classification: a CRF layer over the word tags
    crf_lr_multiplier: float = 100.0             # the CRF's scores learn this many times faster


@dataclass
class TrainConfig:
    """Optimisation and the training loop."""
    task: str = "classification"                 # a registered task (tfllm/tasks): classification,
    #                                              regression, multi_label, token_classification, masked_lm
    epochs: float = 4.0
    max_steps: Optional[int] = None              # overrides epochs when set
    batch_size: int = 16                         # global examples per optimizer step
    grad_accum_steps: int = 1                    # split each batch into this many micro-batches
    eval_batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: Optional[float] = 1.0
    mixed_precision: Literal["none", "auto", "mixed_bfloat16", "mixed_float16"] = "auto"  # auto: bf16 on CPUs
    #                                              with AMX/AVX512-BF16, float16 on GPUs, else float32
    jit_compile: bool = False
    fused_optimizer: bool = True                 # clip + weight decay + Adam as one XLA function (one replica)
    seed: int = 42
    log_every: int = 10
    eval_every: Optional[int] = None             # steps; None = once per epoch
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    early_stopping_patience: Optional[int] = None  # evaluations without improvement
    early_stopping_metric: Optional[str] = None  # dev metric for best weights / early stopping (None: the task's)
    class_weights: Optional[Union[Literal["balanced"], dict[str, float]]] = None  # classification: per-label loss factors
    restore_best: bool = True                    # keep the best dev weights at the end


@dataclass
class DistributeConfig:
    """Data parallelism: default (one device), mirrored (all local GPUs/CPUs) or multi_worker."""
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    num_cpu_devices: int = 0                     # split the CPU into N logical devices (testing)


PrunableGroup = Literal["attention", "feed_forward", "embeddings"]


@dataclass
class PruningConfig:
    """TF-MOT magnitude pruning as a training phase (off unless ``enabled``); see tfllm/compression."""
    enabled: bool = False
    target_sparsity: float = 0.5                 # fraction of zeros in every pruned kernel at the end
    initial_sparsity: float = 0.0                # polynomial schedule only
    schedule: Literal["polynomial", "constant"] = "polynomial"  # PolynomialDecay / ConstantSparsity
    begin_step: int = 0
    end_step: Optional[int] = None               # None: ~70% of the training steps
    frequency: int = 50                          # steps between mask updates
    layers: list[PrunableGroup] = field(default_factory=lambda: ["attention", "feed_forward"])


@dataclass
class QATConfig:
    """Quantization-aware training (TF-MOT fake-quant on the encoder's Dense layers); off by default."""
    enabled: bool = False
    layers: list[PrunableGroup] = field(default_factory=lambda: ["attention", "feed_forward"])
    # dropout during QAT; off by default: the activation ranges are measured in training, and
    # dropout's 1/(1-p) rescaling widens them ~11% beyond what the int8 model sees at inference
    dropout: bool = False


@dataclass
class Int8Config:
    """int8 TFLite export: calibration data, the ops left in float, and the model's output type."""
    calibration_examples: int = 200              # representative examples drawn from the train data
    # op groups computed in float32 between int8 ops (selective quantisation); [] = full integer.
    # On SST-2 dev: full integer -5.0 points, LayerNorm float -2.4, + elementwise float -1.3,
    # + position/token-type embedding lookups float (+0.6 MB) -0.7.
    float_ops: list[Literal["layer_norm", "elementwise", "position_embeddings", "softmax", "gelu"]] = field(
        default_factory=lambda: ["layer_norm", "elementwise", "position_embeddings"])
    output_type: Literal["float32", "int8"] = "float32"  # logits dtype (ids stay int32)


@dataclass
class DistillationConfig:
    """Knowledge distillation: the run also learns a fine-tuned teacher's softened predictions.

    Meant for compression phases (the teacher is then the dense model the phase starts from), but
    any classification run can use it; the teacher needs the run's labels and vocabulary."""
    enabled: bool = False
    teacher: Optional[str] = None                # fine-tuned classifier (run dir); None: model.checkpoint
    temperature: float = 2.0                     # softens both distributions
    weight: float = 0.5                          # share of the distillation term; the rest is label CE


@dataclass
class CompressionConfig:
    pruning: PruningConfig = field(default_factory=PruningConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    int8: Int8Config = field(default_factory=Int8Config)


@dataclass
class Config:
    """A whole experiment; one YAML file maps onto it section by section."""
    name: str = "sentiment_minilm"
    output_dir: Optional[str] = None             # default runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    @property
    def padding_multiple(self) -> int:
        """Batches are padded to a multiple of this: ``data.pad_to_multiple_of`` if set, else 8
        under XLA (each new shape compiles) and 1 otherwise: on a CPU padding is only work (bucketed
        SST-2 batches average 17.0 tokens with 8, 13.7 with 1). On a GPU, set 8 for its tensor cores."""
        if self.data.pad_to_multiple_of:
            return self.data.pad_to_multiple_of
        return 8 if self.train.jit_compile else 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Build a Config from defaults, then a YAML file, then ``section.key=value`` overrides."""
    raw: dict = {}
    if path is not None:
        raw = read_yaml(Path(path))
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return from_dict(Config, raw, where="")


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise TfllmError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TfllmError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TfllmError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise TfllmError(f"override {item!r} is not of the form key=value (e.g. train.epochs=2)")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), _RawText(text, value)


class _RawText:
    """An override value with its original text, so '1e-5' or '007' keep their meaning per type."""

    def __init__(self, text: str, value: Any):
        self.text, self.value = text, value


def set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TfllmError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls, raw: dict, where: str):
    """Recursively turn a mapping into dataclass ``cls``, checking keys and types."""
    if not isinstance(raw, dict):
        raise TfllmError(f"config key {where.rstrip('.') or '<top>'}: expected a mapping of keys, "
                         f"got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{where}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; known keys: {', '.join(names)}"
            raise TfllmError(f"unknown config key {dotted!r}{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            value = value.value if isinstance(value, _RawText) else value
            kwargs[key] = from_dict(kind, value or {}, where=f"{dotted}.")
        elif isinstance(value, dict) and not accepts_mapping(kind):
            raise TfllmError(f"config key {dotted}: is a single value, not a section "
                             f"(got keys {', '.join(map(str, value))})")
        else:
            kwargs[key] = coerce(value, kind, dotted)
    cfg = cls(**kwargs)
    return cfg


def accepts_mapping(kind: Any) -> bool:
    """Whether a type hint admits a ``{key: value}`` mapping (``dict[...]``, maybe in a Union)."""
    if typing.get_origin(kind) is dict:
        return True
    return typing.get_origin(kind) is typing.Union and any(accepts_mapping(a) for a in typing.get_args(kind))


def coerce(value: Any, kind: Any, key: str) -> Any:
    """Check/convert one value against a type hint (Optional, Literal, list, bool, int, float, str)."""
    text = value.text if isinstance(value, _RawText) else None
    value = value.value if isinstance(value, _RawText) else value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:  # Optional[X], or one of several types (the first that fits)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        raw = _RawText(text, value) if text is not None else value
        for alternative in inner[:-1]:
            try:
                return coerce(raw, alternative, key)
            except TfllmError:
                continue
        return coerce(raw, inner[-1], key)
    if origin is dict:
        if not isinstance(value, dict):
            raise TfllmError(f"config key {key}: expected a mapping {{name: value}}, got {value!r}")
        return {str(k): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TfllmError(f"config key {key}: {value!r} is not one of {list(args)}{hint}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list):
            raise TfllmError(f"config key {key}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TfllmError(f"config key {key}: expected true/false, got {value!r}")
    if kind is int:
        if text is not None and re.fullmatch(r"[+-]?[0-9]+", text.strip()):
            return int(text)  # decimal, not YAML 1.1 octal: seed=010 is 10
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TfllmError(f"config key {key}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TfllmError(f"config key {key}: expected a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        if text is not None and not isinstance(value, (dict, list)):
            return text  # e.g. name=007 stays the string '007'
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TfllmError(f"config key {key}: expected a string, got {value!r}")
    raise TfllmError(f"config key {key}: unsupported type {kind}")


def save_config(cfg: Config, path: Path) -> None:
    io.write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _absolute_files(spec: Optional[str]) -> Optional[str]:
    """A data-file spec (path, glob or a,b list) with each part outside the package made absolute."""
    if not spec:
        return spec
    return ",".join(p if p.startswith(BUILTIN) else os.path.abspath(p) for p in spec_parts(spec))


def _absolute_if_local(name: Optional[str]) -> Optional[str]:
    """A checkpoint / dataset name, made absolute when it is an existing local path."""
    return os.path.abspath(name) if name and os.path.exists(name) else name


def with_absolute_paths(cfg: Config) -> Config:
    """``cfg`` with its local data files, checkpoints and teacher as absolute paths: a run's saved
    ``config.yaml`` then works from any directory (export, compare, evaluate, resume), as the
    relative paths of ``configs/*.yaml`` hold only from the repository root."""
    data = dataclasses.replace(cfg.data, train_file=_absolute_files(cfg.data.train_file),
                               dev_file=_absolute_files(cfg.data.dev_file),
                               test_file=_absolute_files(cfg.data.test_file),
                               label_names_file=_absolute_files(cfg.data.label_names_file),
                               hf_dataset=_absolute_if_local(cfg.data.hf_dataset))
    model = dataclasses.replace(cfg.model, checkpoint=_absolute_if_local(cfg.model.checkpoint),
                                tokenizer=_absolute_if_local(cfg.model.tokenizer))
    distillation = dataclasses.replace(cfg.compression.distillation,
                                       teacher=_absolute_if_local(cfg.compression.distillation.teacher))
    compression = dataclasses.replace(cfg.compression, distillation=distillation)
    return dataclasses.replace(cfg, data=data, model=model, compression=compression)
