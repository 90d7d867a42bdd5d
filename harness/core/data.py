"""Task data: rows from JSONL, CSV, parquet or a saved HF dataset dir, turned into prompts and references.

JSONL is read line by line so a bad row is reported with its line number; the other formats go through
`datasets`. Every error names the file, the line (row) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_file, hash_files
from harness.core.taskspec import TaskSpec

# Sandboxed: a task file from elsewhere must not reach Python internals (`cycler.__init__.__globals__.os`).
_JINJA = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line in the file (CSV: counting the header); row number for binary formats
    values: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """One item to evaluate: the rendered prompt (or text to score) and its references."""

    id: str
    prompt: str
    references: list[str]


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
    rows = []
    for number, line in enumerate(_decode_lines(path), start=1):
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


def _template_fields(template: str, spec: TaskSpec) -> set[str]:
    try:
        return jinja2.meta.find_undeclared_variables(_JINJA.parse(template))
    except jinja2.TemplateSyntaxError as error:
        raise HarnessError(f"bad Jinja template: {error.message}", path=spec.source, field="template") from None


def _references(row: Row, spec: TaskSpec) -> list[str]:
    if spec.reference_field is None:
        return []
    value = row.values[spec.reference_field]
    references = value if isinstance(value, list) else [value]
    if not references or not all(isinstance(ref, str | int | float) for ref in references):
        raise HarnessError(
            "references must be a string or a non-empty list of strings",
            path=spec.data,
            line=row.line,
            field=spec.reference_field,
        )
    return [str(ref) for ref in references]


def _render(template: jinja2.Template, values: dict[str, Any], spec: TaskSpec, line: int | None) -> str:
    try:
        return template.render(**values)
    except jinja2.TemplateError as error:
        raise HarnessError(f"template failed: {error}", path=spec.data, line=line, field="template") from None


def _fewshot_answer(example: dict[str, Any], spec: TaskSpec) -> str:
    """A few-shot example's answer: its reference, or the first of a list of references (not the list's repr)."""
    answer = example.get(spec.reference_field or "", "")
    return str(answer[0] if isinstance(answer, list) and answer else answer)


def _fewshot_prefix(spec: TaskSpec, template: jinja2.Template) -> str:
    shots = [
        _render(template, example, spec, None) + spec.target_delimiter + _fewshot_answer(example, spec)
        for example in spec.fewshot
    ]
    return "".join(shot + spec.fewshot_separator for shot in shots)


def build_samples(spec: TaskSpec, rows: list[Row]) -> list[Sample]:
    """Render each row through the task's template; every row must carry every field the task uses."""
    needed = _template_fields(spec.template, spec) | {f for f in (spec.reference_field, spec.id_field) if f}
    template = _JINJA.from_string(spec.template)
    prefix = _fewshot_prefix(spec, template)
    samples, seen_ids = [], set()
    for index, row in enumerate(rows):
        missing = sorted(field for field in needed if row.values.get(field) is None)
        if missing:
            raise HarnessError(
                "missing or null",
                path=spec.data,
                line=row.line,
                field=missing[0],
                hint=f"the task's template, reference_field or id_field use it ({spec.source})",
            )
        sample_id = str(row.values[spec.id_field]) if spec.id_field else str(index)
        if sample_id in seen_ids:
            raise HarnessError(f"duplicate id '{sample_id}'", path=spec.data, line=row.line, field=spec.id_field)
        seen_ids.add(sample_id)
        prompt = prefix + _render(template, row.values, spec, row.line)
        samples.append(Sample(sample_id, prompt, _references(row, spec)))
    return samples


def load_samples(spec: TaskSpec) -> tuple[list[Sample], str]:
    """The task's samples and the fingerprint of its data."""
    rows = read_rows(spec.data, spec.data_format)
    return build_samples(spec, rows), data_fingerprint(spec.data)
