"""Bad input through the real CLI: a clear error naming file, line and field, exit 2, nothing written.

Data is checked before the model loads, so these run in-process and fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app

GOOD_ROWS = [{"id": "a", "question": "Q1?", "answer": "x"}, {"id": "b", "question": "Q2?", "answer": "y"}]
GOOD_FIELDS = {
    "kind": "generate",
    "template": "{{ question }}",
    "reference_field": "answer",
    "metrics": ["exact_match"],
}


def run_cli(folder: Path, tasks: str, out: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["run", "--tasks", tasks, "--tasks-dir", str(folder), "--out", str(out), "--no-cache"]
    )
    return result.exit_code, " ".join(result.output.split())


def assert_user_error(folder: Path, tasks: str, out: Path, *fragments: str) -> None:
    code, output = run_cli(folder, tasks, out)
    assert code == 2, output
    for fragment in fragments:
        assert fragment in output, output
    assert not out.exists(), "nothing may be written on bad input"


def test_unknown_task(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("good", GOOD_ROWS, **GOOD_FIELDS)
    assert_user_error(folder, "good,nope", tmp_path / "runs", "unknown task or group 'nope'", "--tasks", "--tasks-dir")


def test_unknown_metric(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", GOOD_ROWS, **{**GOOD_FIELDS, "metrics": ["exact_match", "bleurt"]})
    assert_user_error(folder, "t", tmp_path / "runs", "t.yaml", "metrics.1", "unknown metric 'bleurt'")


def test_metric_of_the_wrong_kind(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", GOOD_ROWS, **{**GOOD_FIELDS, "metrics": ["perplexity"]})
    assert_user_error(
        folder, "t", tmp_path / "runs", "t.yaml", "metrics.0", "not generate tasks", "metrics for generate tasks: bleu"
    )


def test_unknown_metric_option(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    metrics = [{"name": "exact_match", "options": {"ignore_kase": True}}]
    folder = task_dir("t", GOOD_ROWS, **{**GOOD_FIELDS, "metrics": metrics})
    assert_user_error(folder, "t", tmp_path / "runs", "t.yaml", "metrics.0.options", "ignore_kase")


def test_missing_data_file(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", GOOD_ROWS, **GOOD_FIELDS)
    (folder / "t.jsonl").unlink()
    assert_user_error(folder, "t", tmp_path / "runs", "t.jsonl", "data file not found", "field 'data'")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "broken.yaml").write_text("kind: generate\ntemplate: '{{ q }}'\nmetrics: [exact_match\ndata: x.jsonl\n")
    assert_user_error(folder, "broken", tmp_path / "runs", "broken.yaml:4", "malformed YAML")


def test_invalid_field_value_names_file_line_and_field(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", GOOD_ROWS, **{**GOOD_FIELDS, "generation": {"max_new_tokens": 0}})
    assert_user_error(folder, "t", tmp_path / "runs", "t.yaml:", "generation.max_new_tokens", "greater than 0")


def test_fields_that_conflict_name_the_field_at_fault(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    """Cross-field checks (a model validator's) still name the file, the line and the field at fault."""
    perplexity = {"max_length": 64, "stride": 128}
    folder = task_dir("t", GOOD_ROWS, **{**GOOD_FIELDS, "perplexity": perplexity})
    line = next(n for n, text in enumerate((folder / "t.yaml").read_text().splitlines(), 1) if "stride" in text)
    assert_user_error(folder, "t", tmp_path / "runs", f"t.yaml:{line}:", "field 'perplexity.stride'", "exceed")


def test_unknown_yaml_field(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", GOOD_ROWS, **GOOD_FIELDS, refrence_field="answer")
    assert_user_error(folder, "t", tmp_path / "runs", "t.yaml:", "refrence_field", "Extra inputs are not permitted")


def test_malformed_jsonl_row_names_the_line(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", GOOD_ROWS, **GOOD_FIELDS)
    with (folder / "t.jsonl").open("a") as handle:
        handle.write('{"id": "c", "question": "Q3?", "answer": }\n')
    assert_user_error(folder, "t", tmp_path / "runs", "t.jsonl:3", "malformed JSON")


def test_missing_field_names_row_and_field(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, {"id": "c", "question": "Q3?"}]
    folder = task_dir("t", rows, **GOOD_FIELDS)
    assert_user_error(folder, "t", tmp_path / "runs", "t.jsonl:3", "field 'answer'", "missing")


def test_empty_dataset(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", [], **GOOD_FIELDS)
    assert_user_error(folder, "t", tmp_path / "runs", "t.jsonl", "the dataset is empty")


def test_non_utf8_data_names_the_line(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", GOOD_ROWS, **GOOD_FIELDS)
    with (folder / "t.jsonl").open("ab") as handle:
        handle.write(b'{"id": "c", "question": "caf\xe9?", "answer": "x"}\n')
    assert_user_error(folder, "t", tmp_path / "runs", "t.jsonl:3", "not valid UTF-8")


def test_non_utf8_csv_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "t.csv").write_bytes(b"question,answer\nQ1?,x\nQ2?,caf\xe9\n")
    (folder / "t.yaml").write_text(
        "kind: generate\ndata: t.csv\ntemplate: '{{ question }}'\nreference_field: answer\nmetrics: [f1]\n"
    )
    assert_user_error(folder, "t", tmp_path / "runs", "t.csv:3", "not valid UTF-8")


def test_duplicate_ids(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", [*GOOD_ROWS, GOOD_ROWS[0]], **{**GOOD_FIELDS, "id_field": "id"})
    assert_user_error(folder, "t", tmp_path / "runs", "t.jsonl:3", "duplicate id 'a'")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--quant", "fp3", "--quant"), ("--dtype", "float8", "--dtype"), ("--attention", "flash9", "--attention")],
)
def test_bad_model_flags(task_dir: Callable[..., Path], tmp_path: Path, flag: str, value: str, message: str) -> None:
    folder = task_dir("t", GOOD_ROWS, **GOOD_FIELDS)
    result = CliRunner().invoke(
        app, ["run", "--tasks", "t", "--tasks-dir", str(folder), flag, value, "--out", str(tmp_path / "runs")]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "runs").exists()


def test_model_folder_that_is_not_a_model(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("t", GOOD_ROWS, **GOOD_FIELDS)
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--tasks",
            "t",
            "--tasks-dir",
            str(folder),
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2
    assert "field '--model'" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "expected auto, cpu, cuda or cuda:N, not 'gpu'"),
        ("cuda:64", "cuda:64 requested, but torch sees"),  # no machine here has 65 GPUs
    ],
)
def test_device_that_is_not_there_names_the_flag(device: str, message: str, tmp_path: Path) -> None:
    """Checked before anything loads: a missing CUDA device is an error naming --device, not a torch traceback."""
    result = CliRunner().invoke(app, ["run", "--tasks", "factual_qa", "--device", device, "--out", str(tmp_path / "r")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert f"field '--device': {message}" in output, output
    assert "Value error" not in output and "Traceback" not in output
    assert not (tmp_path / "r").exists()


def test_a_missing_field_names_the_file_but_no_line(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    """A key the file lacks has no line of its own: the error names the file and the field, not line 1."""
    fields = {key: value for key, value in GOOD_FIELDS.items() if key != "reference_field"}
    folder = task_dir("t", GOOD_ROWS, **fields)
    code, output = run_cli(folder, "t", tmp_path / "runs")
    assert code == 2, output
    assert "t.yaml: field 'reference_field': a generate task needs reference_field" in output, output


MC_ROWS = [{"q": "Sky?", "options": ["blue", "green"], "answer": 0}]
MC_FIELDS = {
    "kind": "multiple_choice",
    "template": "{{ q }}",
    "choices": "options",
    "target": "answer",
    "metrics": ["acc"],
}


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"answer": 2}, "target", "gold index 2 is out of range for 2 choices"),
        ({"answer": "red"}, "target", "gold 'red' is not one of the 2 choices"),
        ({"options": []}, "choices", "choices must be a non-empty list"),
        ({"options": None}, "options", "missing or null"),
    ],
)
def test_bad_multiple_choice_rows_name_row_and_field(
    task_dir: Callable[..., Path], tmp_path: Path, row: dict[str, Any], field: str, message: str
) -> None:
    rows = [MC_ROWS[0], {**MC_ROWS[0], **row}]
    folder = task_dir("t", rows, **MC_FIELDS)
    assert_user_error(folder, "t", tmp_path / "runs", "t.jsonl:2", f"field '{field}'", message)
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_a_multiple_choice_task_without_choices_is_refused(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    fields = {key: value for key, value in MC_FIELDS.items() if key != "choices"}
    assert_user_error(task_dir("t", MC_ROWS, **fields), "t", tmp_path / "runs", "t.yaml", "choices", "needs choices")
