"""Task data: rows from JSONL, CSV, parquet or a saved HF dataset dir (harness.core.samples renders them).

JSONL is read line by line so a bad row is reported with its line number; the other formats go through
`datasets`, CSV after a structural check that finds the line each record starts on. Every error names the file,
the line (row) and the field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_file, hash_files


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line in the file (CSV: counting the header); row number for binary formats
    values: dict[str, Any]


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "hf_disk"
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in formats:
        raise HarnessError(
            "cannot tell the data format from the file name",
            path=path,
            field="data_format",
            hint="use .jsonl, .csv, .parquet, a saved dataset folder, or set data_format",
        )
    return formats[suffix]


def _decode_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise HarnessError(
                f"not valid UTF-8 (byte {error.start + 1} of the line)",
                path=path,
                line=number,
                hint="re-save the file as UTF-8",
            ) from None
    return raw.decode("utf-8").split("\n")


def _read_jsonl(path: Path) -> list[Row]:
    """JSON Lines; a `.json` file holding one array of objects is read as those rows (row numbers for lines)."""
    lines = _decode_lines(path)
    if path.suffix.lower() == ".json":
        array = _json_array(path, "\n".join(lines))
        if array is not None:
            return array
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as error:
            raise HarnessError(f"malformed JSON: {error.msg} (column {error.colno})", path=path, line=number) from None
        if not isinstance(values, dict):
            raise HarnessError("each line must be a JSON object", path=path, line=number)
        rows.append(Row(number, values))
    return rows


def _json_array(path: Path, text: str) -> list[Row] | None:
    """The rows of a JSON array of objects, or None when the text is not one JSON value (then it is JSON Lines)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict) and len(text.strip().splitlines()) <= 1:
        return [Row(1, value)]  # a one-line file holding one object: JSON Lines of one row
    if not isinstance(value, list):
        raise HarnessError("a .json data file must hold an array of objects (or be JSON Lines)", path=path)
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise HarnessError(f"item {index} of the array is not a JSON object", path=path, field=f"[{index - 1}]")
    return [Row(index, item) for index, item in enumerate(value, start=1)]


def _csv_record_lines(path: Path) -> list[int]:
    """The line each CSV record starts on (a quoted field may span lines), checking the structure first: a record
    with more or fewer fields than the header, or a quote never closed, is an error naming its line."""
    text = "\n".join(_decode_lines(path))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    starts, header, previous_end = [], None, 0
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not record:
                continue  # a blank line, skipped as pandas does
            if header is None:
                header = record
            elif len(record) != len(header):
                raise HarnessError(
                    f"{len(record)} fields where the header has {len(header)}",
                    path=path,
                    line=start,
                    hint="quote a field that holds a comma",
                )
            else:
                starts.append(start)
    except csv.Error as error:
        reason = "a quoted field that starts here is never closed" if "end of data" in str(error) else str(error)
        raise HarnessError(f"malformed CSV: {reason}", path=path, line=previous_end + 1) from None
    return starts


def _saved_split(path: Path, loaded: Any, split: str | None) -> Any:
    """The split to read from a saved dataset folder: a DatasetDict with several splits needs `split`."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        if split is not None:
            raise HarnessError("the saved dataset has no splits", path=path, field="split", hint="remove split")
        return loaded
    names = ", ".join(loaded)
    if split is None and len(loaded) == 1:
        return next(iter(loaded.values()))
    if split is None:
        raise HarnessError(f"the saved dataset has splits {names}: name one", path=path, field="split")
    if split not in loaded:
        raise HarnessError(f"no split '{split}' (the saved dataset has {names})", path=path, field="split")
    return loaded[split]


def _read_with_datasets(path: Path, data_format: str, split: str | None) -> list[Row]:
    import datasets

    datasets.disable_progress_bars()
    record_lines = _csv_record_lines(path) if data_format == "csv" else []
    try:
        if data_format == "hf_disk":
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = (
                datasets.Dataset.from_csv(str(path), keep_in_memory=True)
                if data_format == "csv"
                else datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
            )
    except Exception as error:  # datasets raises many types for unreadable files
        raise HarnessError(f"cannot read {data_format} data: {error}", path=path) from None
    if data_format == "hf_disk":
        loaded = _saved_split(path, loaded, split)
    if len(record_lines) != len(loaded):  # parquet and saved datasets: the row number stands as the line
        record_lines = list(range(1, len(loaded) + 1))
    return [Row(line, dict(values)) for line, values in zip(record_lines, loaded, strict=True)]


def read_rows(path: Path, data_format: str = "auto", split: str | None = None) -> list[Row]:
    """All rows of a data file (of `split` in a saved DatasetDict folder); an empty file is an error."""
    if not path.exists():
        raise HarnessError("data file not found", path=path, field="data")
    data_format = _detect_format(path) if data_format == "auto" else data_format
    if split is not None and data_format != "hf_disk":
        raise HarnessError(f"split is for a saved dataset folder, not {data_format} data", path=path, field="split")
    rows = _read_jsonl(path) if data_format == "jsonl" else _read_with_datasets(path, data_format, split)
    if not rows:
        raise HarnessError("the dataset is empty", path=path, field="data")
    return rows


def data_fingerprint(path: Path) -> str:
    if path.is_dir():
        return hash_files([p for p in path.rglob("*") if p.is_file()], path)
    return hash_file(path)


@dataclass(frozen=True)
class TaskRows:
    """A task's rows to score, the rows its drawn few-shot examples come from (None: the rows themselves), and
    one fingerprint of both."""

    rows: list[Row]
    fewshot: list[Row] | None
    fingerprint: str
    revision: str | None = None  # a hub dataset's commit, as read
