"""The loop's history file: a damaged line is an error naming the file and line, not a traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app


def test_a_damaged_history_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "history.jsonl").write_text('{"loop_id": "a"}\n{"loop_id": "b", "data\n')
    result = CliRunner().invoke(app, ["history", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'history.jsonl'}:2: not a JSON line" in " ".join(result.output.split())
