"""Training data formats, bad rows, and the pre-training checks (duplicates, over-long rows, leakage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.checks import check_examples
from adapters.formats import Turn, load_examples
from harness.cli import app
from harness.core.errors import HarnessError


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("row", "turns"),
    [
        (
            {"instruction": "Add", "input": "2 and 3", "output": "5"},
            (Turn("user", "Add\n\n2 and 3"), Turn("model", "5")),
        ),
        ({"instruction": "Say hi", "output": "hi"}, (Turn("user", "Say hi"), Turn("model", "hi"))),
        ({"prompt": "Q", "completion": "A"}, (Turn("user", "Q"), Turn("model", "A"))),
        ({"text": "Just text."}, (Turn("text", "Just text."),)),
        (
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            },
            (Turn("user", "Be brief.\n\nHi"), Turn("model", "Hello")),
        ),
    ],
    ids=["alpaca-input", "alpaca", "prompt-completion", "text", "messages-system-folded"],
)
def test_formats_are_detected_and_converted(tmp_path: Path, row: dict, turns: tuple) -> None:
    (example,), skipped = load_examples(write(tmp_path / "d.jsonl", [row]))
    assert example.turns == turns and not skipped


@pytest.mark.parametrize(
    ("bad_row", "fragments"),
    [
        ({"instruction": "x", "output": ""}, ["d.jsonl:2", "field 'output'", "missing or empty"]),
        ({"instruction": "x", "output": 5}, ["d.jsonl:2", "field 'output'", "must be a string"]),
        ({"messages": [{"role": "user", "content": "x"}]}, ["d.jsonl:2", "field 'messages'", "end with an assistant"]),
        ({"messages": [{"role": "robot", "content": "x"}]}, ["d.jsonl:2", "field 'messages.0.role'"]),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, bad_row: dict, fragments: list[str]) -> None:
    first = (
        {"instruction": "a", "output": "b"}
        if "instruction" in bad_row
        else {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    path = write(tmp_path / "d.jsonl", [first, bad_row])
    with pytest.raises(HarnessError) as raised:
        load_examples(path)
    for fragment in fragments:
        assert fragment in str(raised.value)
    examples, skipped = load_examples(path, skip_bad_rows=True)
    assert len(examples) == 1 and len(skipped) == 1


def test_unknown_format_is_reported(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="cannot tell the data format"):
        load_examples(write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}]))


def test_checks_find_duplicates_over_long_rows_and_leakage(tmp_path: Path) -> None:
    leaked_text = "Patrons are kindly requested to refrain from consuming food within the reading room."
    rows = [
        {"prompt": "Rewrite: the bus is late.", "completion": "The bus is late."},
        {"prompt": "Rewrite: the bus is late.", "completion": "The bus is late."},
        {"prompt": "rewrite the BUS is late", "completion": "the bus is late!"},
        {"prompt": f"Rewrite: {leaked_text}", "completion": "Please do not eat in the reading room."},
        {"prompt": "Something else entirely.", "completion": "Fine."},
    ]
    examples, _ = load_examples(write(tmp_path / "d.jsonl", rows))
    report = check_examples(examples, [10, 10, 10, 40, 99], max_seq_len=50, leakage_tasks=["plain_english"])
    assert report.exact_duplicates == [(2, 1)]
    assert report.normalized_duplicates == [(3, 1)]
    assert report.over_long == [(5, 99)]
    assert report.leaked == [(4, "plain_english")]
    assert report.lines_to_drop(duplicates=True, leaked=True) == {2, 3, 4}
    assert not report.clean


def test_data_check_command(tmp_path: Path) -> None:
    rows = [{"text": "One row."}, {"text": "One row."}]
    result = CliRunner().invoke(app, ["data", "check", str(write(tmp_path / "d.jsonl", rows)), "--strict"])
    assert result.exit_code == 1
    assert "exact duplicates" in result.output and "2 (1)" in result.output
    assert "tokenize rows 2/2 (100%)" in result.output  # progress (log lines: not a terminal)
