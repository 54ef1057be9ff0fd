"""User data files: CSV, TSV (with a header row) and JSONL, with a text column and a label column."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from detrigger.data.dataset import TextDataset
from detrigger.errors import DetriggerError

SUFFIXES = (".csv", ".tsv", ".jsonl")
MAX_LINE_BYTES = 1 << 20  # one limit for every format: a longer line is refused with its number


def _lines(path: Path) -> Iterator[str]:
    """The file's lines decoded one at a time, so a bad byte or an over-long line is reported with its line
    number and its byte offset in the file."""
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise DetriggerError(f"{path}: line {n}: {len(raw)} bytes, over the line limit of {MAX_LINE_BYTES}")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DetriggerError(f"{path}: line {n}: not UTF-8 text ({exc.reason} at byte "
                                     f"{offset + exc.start} of the file)") from None
            offset += len(raw)


def _rows_delimited(path: Path, delimiter: str, text_col: str, label_col: str) -> Iterator[tuple[int, object, object]]:
    csv.field_size_limit(MAX_LINE_BYTES)
    reader = csv.reader(_lines(path), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DetriggerError(f"{path}: the file is empty (expected a header row)") from None
    except csv.Error as exc:
        raise DetriggerError(f"{path}: line 1: malformed header: {exc}") from None
    for col in (text_col, label_col):
        if col not in header:
            raise DetriggerError(f"{path}: no column {col!r} (columns: {', '.join(header)})")
    ti, li = header.index(text_col), header.index(label_col)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DetriggerError(f"{path}: line {start}: malformed row: {exc}") from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            raise DetriggerError(f"{path}: line {start}: expected {len(header)} fields, found {len(row)}")
        yield start, row[ti], row[li]


def _rows_jsonl(path: Path, text_col: str, label_col: str) -> Iterator[tuple[int, object, object]]:
    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DetriggerError(f"{path}: line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DetriggerError(f"{path}: line {n}: expected a JSON object")
        for col in (text_col, label_col):
            if col not in obj:
                raise DetriggerError(f"{path}: line {n}: no key {col!r} (keys: {', '.join(obj)})")
        yield n, obj[text_col], obj[label_col]


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def label_ids(raw: Sequence[tuple[int, str]], label_names: Sequence[str] | None,
              where: str, unit: str = "line") -> tuple[list[int], tuple[str, ...]]:
    """Map raw string labels to ids.

    With `label_names` (a model's label set) each label must be one of them, or an integer id when the
    names are generic (`LABEL_3` or `3`). Without it, integer labels 0..K-1 keep their ids and any other
    label set is sorted; the returned names are the mapping (id i <-> names[i]) to save with the model.
    """
    if label_names is None:
        values = sorted({v for _, v in raw})
        ints = [_as_int(v) for v in values]
        if values and all(i is not None for i in ints) and sorted(ints) == list(range(len(ints))):  # type: ignore[type-var]
            label_names = tuple(str(i) for i in range(len(ints)))
        else:
            label_names = tuple(values)
        if len(label_names) < 2:
            raise DetriggerError(f"{where}: labels [{', '.join(values)}]: a classifier needs at least two classes")
    names = tuple(label_names)
    index = {name: i for i, name in enumerate(names)}
    generic = all(n in (f"LABEL_{i}", str(i)) for i, n in enumerate(names))
    ids = []
    for line, value in raw:
        if value in index:
            ids.append(index[value])
            continue
        as_int = _as_int(value)
        if generic and as_int is not None and 0 <= as_int < len(names):
            ids.append(as_int)
            continue
        raise DetriggerError(f"{where}: {unit} {line}: label {value!r} is not in the label set [{', '.join(names)}]")
    return ids, names


def read_file(path: str | Path, *, text_column: str = "text", label_column: str = "label",
              label_names: Sequence[str] | None = None) -> TextDataset:
    """Read a CSV/TSV/JSONL file; every error names the file and, where there is one, the line."""
    path = Path(path)
    if not path.is_file():
        raise DetriggerError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _rows_jsonl(path, text_column, label_column)
    elif suffix in (".csv", ".tsv"):
        rows = _rows_delimited(path, "," if suffix == ".csv" else "\t", text_column, label_column)
    else:
        raise DetriggerError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .jsonl)")
    texts: list[str] = []
    raw_labels: list[tuple[int, str]] = []
    for line, text, label in rows:
        if not isinstance(text, str) or not text.strip():
            raise DetriggerError(f"{path}: line {line}: empty text in column {text_column!r}")
        if label is None or isinstance(label, (bool, dict, list)) or str(label).strip() == "":
            raise DetriggerError(f"{path}: line {line}: missing or invalid label in column {label_column!r}")
        texts.append(text.strip())
        raw_labels.append((line, str(label).strip()))
    if not texts:
        raise DetriggerError(f"{path}: no data rows")
    ids, names = label_ids(raw_labels, label_names, str(path))
    return TextDataset(tuple(texts), tuple(ids), names, path.stem)
