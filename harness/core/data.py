"""Task data: rows from JSONL, CSV, parquet or a saved HF dataset dir (harness.core.samples renders them).

JSONL is read line by line so a bad row is reported with its line number; the other formats go through
`datasets`. Every error names the file, the line (row) and the field.
"""

from __future__ import annotations

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


def _read_with_datasets(path: Path, data_format: str) -> list[Row]:
    import datasets

    datasets.disable_progress_bars()
    if data_format == "csv":
        _decode_lines(path)
    try:
        if data_format == "hf_disk":
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[next(iter(loaded))]
        else:
            loaded = (
                datasets.Dataset.from_csv(str(path), keep_in_memory=True)
                if data_format == "csv"
                else datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
            )
    except Exception as error:  # datasets raises many types for unreadable files
        raise HarnessError(f"cannot read {data_format} data: {error}", path=path) from None
    first_line = 2 if data_format == "csv" else 1  # CSV: line 1 is the header
    return [Row(first_line + index, dict(values)) for index, values in enumerate(loaded)]


def read_rows(path: Path, data_format: str = "auto") -> list[Row]:
    """All rows of a data file; an empty file is an error."""
    if not path.exists():
        raise HarnessError("data file not found", path=path, field="data")
    data_format = _detect_format(path) if data_format == "auto" else data_format
    rows = _read_jsonl(path) if data_format == "jsonl" else _read_with_datasets(path, data_format)
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
