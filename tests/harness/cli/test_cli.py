"""The `harness` CLI end to end on the real embedded Gemma."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app


def test_tasks_lists_builtin_tasks_with_kind_metrics_and_size() -> None:
    result = CliRunner().invoke(app, ["tasks"])
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 4}
    assert {"general_english", "factual_qa", "plain_english"} <= set(rows)
    assert "perplexity" in rows["general_english"] and "40" in rows["general_english"]
    assert "exact_match, f1" in rows["factual_qa"]
    assert "allenai/ai2_arc[ARC-Easy]:test" in rows["arc_easy"] and "acc, acc_norm" in rows["arc_easy"]
    assert "group (micro) of 4" in rows["mmlu"]


def test_run_prints_table_and_record_at_the_log_level_asked(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir(
        "text",
        [{"text": "Trains make distances feel manageable."}],
        kind="perplexity",
        metrics=["perplexity"],
    )
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "harness", "-v", "run", "--tasks", "text", "--tasks-dir", str(folder)]
    command += ["--out", str(out), "--cache-path", str(tmp_path / "cache.sqlite")]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "DEBUG harness.evaluation.runner: text: 1 samples, 0 from the cache, 1 to compute" in completed.stderr
    assert "text 1/1 (100%)" in completed.stderr  # progress, as log lines (stderr is no terminal)
    quiet_command = [*command[:3], "-q", *command[4:]]
    quiet_command[quiet_command.index("--out") + 1] = str(tmp_path / "quiet")
    quiet = subprocess.run(quiet_command, capture_output=True, text=True, check=True)
    assert quiet.stderr == "" and "perplexity" in quiet.stdout  # -q: no progress or status, the results still
    (results_path,) = out.rglob("results.json")
    record = json.loads(results_path.read_text())
    assert record["schema_version"] == 1
    perplexity = record["tasks"]["text"]["metrics"]["perplexity"]["value"]
    assert f"{perplexity:.4g}" in completed.stdout
    assert str(results_path) in completed.stdout.replace("\n", "")


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    """`--out` naming a file failed only after the evaluation had run; now every output folder flag is checked
    first, as a usage error (exit 2)."""
    a_file = tmp_path / "results"
    a_file.write_text("")
    for command in (
        ["run", "--tasks", "factual_qa", "--out", str(a_file)],
        ["compare", str(a_file), "--out", str(a_file)],
        ["loop", "--data", str(a_file), "--suite", str(a_file), "--workdir", str(a_file)],
        ["train", "--data", str(a_file), "--out", str(a_file)],
    ):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, command
        assert "is a file" in " ".join(result.output.replace("│", " ").split()), command


def test_a_judge_metrics_n_is_its_valid_judgments_with_the_errors_beside() -> None:
    """The console showed n 17 for a judge metric computed from 9 judgments."""
    from harness.cli.tables import sample_count
    from harness.core.record import MetricValue

    judged = MetricValue(value=3.5, metric="judge:general", n=9, n_errors=8)
    assert sample_count(judged, 17) == "9 (8 errors)"
    assert sample_count(MetricValue(value=3.5, metric="judge:general", n=17, n_errors=0), 17) == "17"
    assert sample_count(MetricValue(value=0.5, metric="exact_match"), 17) == "17"
