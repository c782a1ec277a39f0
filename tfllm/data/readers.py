"""Read CSV / TSV / JSONL / JSON / parquet files (or a Hugging Face dataset) into validated examples.

Every problem with the input becomes a one-line :class:`TfllmError` naming the file, row or column.

    >>> ex = read_examples("../shared/data/sst2/dev.tsv", text_column="sentence", label_column="label")
    >>> len(ex), ex.texts[0][:20], ex.labels[0]
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from tfllm.errors import TfllmError

PACKAGE_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet",
           ".txt": "txt", ".text": "txt"}


@dataclass
class Examples:
    """Texts (and optional second texts and raw string labels) read from one source."""
    texts: list[str]
    pairs: Optional[list[str]]
    labels: Optional[list[str]]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> "Examples":
        pick = lambda xs: None if xs is None else [xs[i] for i in indices]  # noqa: E731
        return Examples(pick(self.texts), pick(self.pairs), pick(self.labels), self.source)


BUILTIN = "builtin:"  # prefix of a data file shipped inside the package


def spec_parts(spec: str) -> list[str]:
    """The parts of a data-file spec: ``"a.tsv, b*.tsv,builtin:x/y.tsv"`` -> three parts."""
    return [p.strip() for p in spec.split(",") if p.strip()]


def data_paths(spec: str, what: str = "data file") -> list[Path]:
    """Files named by a path, a ``builtin:NAME/FILE`` (inside the package), a glob or a
    comma-separated list of those, in that order (a glob's matches sorted)."""
    paths: list[Path] = []
    for part in spec_parts(spec):
        if part.startswith(BUILTIN):
            matches = [PACKAGE_RESOURCES / part[len(BUILTIN):]]
        elif glob.has_magic(part):
            matches = [Path(p) for p in sorted(glob.glob(part)) if Path(p).is_file()]
            if not matches:
                raise TfllmError(f"{what}: no files match {part}")
        else:
            matches = [Path(part)]
        for path in matches:
            if not path.is_file():
                raise TfllmError(f"{what} not found: {part}")
        paths += matches
    if not paths:
        raise TfllmError(f"{what}: no file given ({spec!r})")
    return paths


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s in FORMATS]
    if not suffixes:
        raise TfllmError(f"{path}: cannot tell the format from the extension; set data.format")
    return FORMATS[suffixes[-1]]


def read_text(path: Path) -> str:
    """Whole file as text; a UTF-8 BOM is dropped, invalid UTF-8 is reported with its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TfllmError(f"{path} line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); "
                         "re-encode the file as UTF-8") from None


def read_json(path: Path):
    """A JSON file's value; invalid UTF-8 or JSON is reported with its line."""
    return _load_json(path, read_text(Path(path)))


def _load_json(path: Path, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TfllmError(f"{path} line {e.lineno}: malformed JSON ({e.msg})") from None


def read_table(path: Path, fmt: str = "auto", has_header: bool = True,
               column_names: Optional[list[str]] = None) -> pd.DataFrame:
    """Read a data file into a DataFrame of strings (JSON values keep their types)."""
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises many kinds
            raise TfllmError(f"{path}: cannot read parquet: {str(e).splitlines()[0]}") from None
    else:
        text = read_text(path)
        if not text.strip():
            raise TfllmError(f"{path}: file is empty")
        if fmt in ("csv", "tsv"):
            frame = _parse_delimited(path, text, "," if fmt == "csv" else "\t", has_header, column_names)
        elif fmt == "jsonl":
            frame = _parse_jsonl(path, text)
        elif fmt == "json":
            frame = _parse_json(path, text)
        else:  # txt: one example a line
            frame = pd.DataFrame({(column_names or ["text"])[0]: text.splitlines()})
    if len(frame) == 0:
        raise TfllmError(f"{path}: no data rows (header only?)")
    return frame


def _parse_delimited(path: Path, text: str, sep: str, has_header: bool,
                     column_names: Optional[list[str]]) -> pd.DataFrame:
    # GLUE-style TSV files are unquoted: a quote character is text, not a field delimiter.
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    kind = "TSV" if sep == "\t" else "CSV"

    def parse(on_extra_fields: str) -> pd.DataFrame:
        # index_col=False: a row with more fields than the header must not turn column 1 into the
        # index (silently shifting every column); pandas warns and drops the extra fields instead.
        with warnings.catch_warnings():
            warnings.simplefilter(on_extra_fields, pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text), sep=sep, quoting=quoting, dtype=str,
                               keep_default_na=False, header=0 if has_header else None,
                               names=column_names if column_names else None, index_col=False,
                               skip_blank_lines=True, engine="c")

    try:
        try:
            frame = parse("error")
        except pd.errors.ParserWarning:
            extra = _extra_fields(text, sep, quoting, len(column_names) if column_names else None)
            if extra:  # non-empty fields beyond the header's columns
                raise TfllmError(f"{path}: malformed {kind}: Expected {extra[0]} fields in line "
                                 f"{extra[1]}, saw {extra[2]}") from None
            frame = parse("ignore")  # only empty trailing fields (e.g. a tab at each line's end)
    except pd.errors.ParserError as e:
        raise TfllmError(f"{path}: malformed {kind}: {_first_line(e)}") from None
    except pd.errors.EmptyDataError:
        raise TfllmError(f"{path}: file is empty") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _extra_fields(text: str, sep: str, quoting: int, width: Optional[int]) -> Optional[tuple[int, int, int]]:
    """``(expected, line, seen)`` for the first row with non-empty fields beyond ``width``."""
    reader = csv.reader(io.StringIO(text), delimiter=sep, quoting=quoting)
    for row in reader:
        if not row:
            continue
        if width is None:
            width = len(row)  # the header
        elif len(row) > width and any(field.strip() for field in row[width:]):
            return width, reader.line_num, len(row)
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0].replace("Error tokenizing data. C error: ", "")


def jsonl_objects(path: Path, text: str):
    """``(line number, object)`` for each non-blank line of a JSONL text; errors name the line."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TfllmError(f"{path} line {number}: malformed JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise TfllmError(f"{path} line {number}: expected a JSON object per line")
        yield number, row


def _parse_jsonl(path: Path, text: str) -> pd.DataFrame:
    return pd.DataFrame([row for _, row in jsonl_objects(path, text)])


def _parse_json(path: Path, text: str) -> pd.DataFrame:
    data = _load_json(path, text)
    if isinstance(data, dict):  # {"data": [...]} or column -> list
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]) else data
    try:
        return pd.DataFrame(data)
    except ValueError as e:
        raise TfllmError(f"{path}: cannot read as a table: {e}") from None


def is_missing(value) -> bool:
    """None, NaN, pandas' NA/NaT (nullable parquet columns) or a blank string."""
    return value is None or value is pd.NA or value is pd.NaT or (
        isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def label_to_str(value) -> str:
    """A label cell as text: ``1.0`` -> ``"1"``; a JSON / parquet list of labels (multi-label)
    -> its JSON text, which :func:`tfllm.data.multilabel.parse_label_sets` reads back."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays (parquet list columns)
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value).strip()


def frame_to_examples(frame: pd.DataFrame, source: str, text_column: str,
                      text_pair_column: Optional[str] = None, label_column: Optional[str] = None,
                      require_labels: bool = True) -> Examples:
    """Pick and validate the text / pair / label columns of a table."""
    wanted = [text_column] + [c for c in (text_pair_column, label_column) if c]
    for column in wanted:
        if column not in frame.columns:
            if column == label_column and not require_labels:
                label_column = None
                continue
            raise TfllmError(f"{source}: no column {column!r} (columns: {', '.join(map(str, frame.columns))})")
    texts = _column_texts(frame, text_column, source)
    pairs = _column_texts(frame, text_pair_column, source) if text_pair_column else None
    labels = None
    if label_column:
        labels = []
        for row, value in enumerate(frame[label_column].tolist(), start=1):
            if is_missing(value):
                raise TfllmError(f"{source} row {row}: missing label in column {label_column!r}")
            labels.append(label_to_str(value))
    return Examples(texts, pairs, labels, source)


def _column_texts(frame: pd.DataFrame, column: str, source: str) -> list[str]:
    texts = []
    for row, value in enumerate(frame[column].tolist(), start=1):
        if is_missing(value):
            raise TfllmError(f"{source} row {row}: empty text in column {column!r}")
        texts.append(str(value).strip())
    return texts


def read_examples(spec: str, text_column: str = "text", text_pair_column: Optional[str] = None,
                  label_column: Optional[str] = "label", fmt: str = "auto", has_header: bool = True,
                  column_names: Optional[list[str]] = None, require_labels: bool = True) -> Examples:
    """Read a data file (or several: a glob / comma-separated list, see :func:`data_paths`) into
    validated :class:`Examples`; errors name the file and row."""
    paths = data_paths(spec)
    parts = [frame_to_examples(read_table(path, fmt, has_header, column_names),
                               str(spec) if len(paths) == 1 else str(path), text_column,
                               text_pair_column, label_column, require_labels) for path in paths]
    return concatenate(parts, str(spec))


def concatenate(parts: list[Examples], source: str) -> Examples:
    """One :class:`Examples` of several, in order (labels only if every part has them)."""
    if len(parts) == 1:
        return parts[0]
    join = lambda lists: None if any(x is None for x in lists) else [v for x in lists for v in x]  # noqa: E731
    return Examples(join([p.texts for p in parts]), join([p.pairs for p in parts]),
                    join([p.labels for p in parts]), source)


def read_hf_split(name: str, split: str, config_name: Optional[str] = None,
                  label_column: Optional[str] = None) -> tuple[pd.DataFrame, Optional[list[str]]]:
    """A Hugging Face dataset split as a DataFrame, plus the ClassLabel names of ``label_column``.

    ``name`` is a hub name (needs network), a builder such as ``csv``/``json`` is not supported
    here, or a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
    A single saved ``Dataset`` is the ``train`` split; it has no other split.
    """
    import datasets  # imported lazily: it is slow to import and optional for file users

    hint = "; set data.hf_dev_split=null to hold out data.dev_fraction of train as dev"
    try:
        if Path(name).is_dir():
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise TfllmError(f"hf dataset {name}: no split {split!r} "
                                     f"(splits: {', '.join(loaded)}){hint}")
                ds = loaded[split]
            elif split in ("train", str(loaded.split)):
                ds = loaded
            else:
                raise TfllmError(f"hf dataset {name}: a single saved Dataset is the 'train' split, "
                                 f"there is no split {split!r}{hint}")
        else:
            ds = datasets.load_dataset(name, config_name, split=split)
    except TfllmError:
        raise
    except KeyError:
        raise TfllmError(f"hf dataset {name}: no split {split!r}") from None
    except Exception as e:
        raise TfllmError(f"hf dataset {name} split {split}: {_first_line(e)}") from None
    frame = ds.to_pandas()
    names = None
    for feature_name, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):
            frame[feature_name] = [feature.names[i] if i >= 0 else None for i in frame[feature_name]]
            if label_column is None or feature_name == label_column:
                names = names or feature.names
    return frame, names
