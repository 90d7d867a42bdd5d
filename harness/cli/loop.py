"""`harness loop` and `harness history`: the train -> evaluate -> compare -> report -> gate loop and its past runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from harness.cli.options import (
    EXIT_GATE_FAILED,
    JudgeKeyOption,
    JudgeModelOption,
    MlflowOption,
    TrackingUriOption,
    console,
    err_console,
    user_errors,
)
from harness.cli.tables import gate_table, headline_table
from harness.core.errors import HarnessError


@user_errors
def loop_command(
    data: Annotated[Path, typer.Option(help="Training data file")],
    suite: Annotated[Path, typer.Option(help="Suite YAML: tasks, forgetting tasks, pairwise judge, gate")],
    train_config: Annotated[Path | None, typer.Option(help="Training config YAML")] = None,
    gate: Annotated[Path | None, typer.Option(help="Gate rules (default: the suite's)")] = None,
    judge: Annotated[str | None, typer.Option(help="'local' (starts SmolLM2 on 127.0.0.1) or a base URL")] = None,
    judge_model: JudgeModelOption = None,
    judge_api_key_env: JudgeKeyOption = "OPENAI_API_KEY",
    workdir: Annotated[Path, typer.Option(file_okay=False, help="Adapters, runs, reports, cache and history")] = Path(
        "loop"
    ),
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    mlflow: MlflowOption = False,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Train (or reuse) an adapter on --data, evaluate base and tuned on the suite, compare, report, gate."""
    from adapters.config import load_train_config
    from harness.loop import LoopOptions, load_suite, run_loop

    options = LoopOptions(
        data=data,
        suite=load_suite(suite),
        train_config=load_train_config(train_config, {}),
        workdir=workdir,
        gate=gate,
        judge=judge,
        judge_model=judge_model,
        judge_api_key_env=judge_api_key_env,
        batch_size=batch_size,
    )
    if not data.is_file():
        raise HarnessError("training data not found", path=data, field="--data")
    outcome = run_loop(options, err_console)
    console.print(headline_table(outcome.comparison))
    if outcome.comparison.training:
        from harness.cli.train import print_data_findings

        print_data_findings(outcome.comparison.training)
    console.print(
        f"training steps: {outcome.training_steps}   model calls: {outcome.model_calls}   "
        f"judge calls: {outcome.judge_calls}"
    )
    console.print(f"report: {outcome.report_dir / 'report.html'}  (Markdown: {outcome.report_dir / 'report.md'})")
    if mlflow:
        _log_loop_to_mlflow(outcome, workdir, tracking_uri)
    if outcome.gate:
        console.print(gate_table(outcome.gate))
        console.print(f"gate: {'passed' if outcome.passed else '[red]FAILED[/]'}")
        if not outcome.passed:
            raise typer.Exit(EXIT_GATE_FAILED)


@user_errors
def history_command(
    workdir: Annotated[Path, typer.Option(help="The loop's working folder")] = Path("loop"),
    html: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Also write one self-contained page of every run: a table and trend plots"),
    ] = None,
    runs: Annotated[
        list[Path] | None,
        typer.Option("--runs", help="Also show the runs under this folder (`harness run --out`) on the page"),
    ] = None,
) -> None:
    """Past loop runs: when, which data, whether it trained, and headline metrics; `--html` writes a page of every
    run with trend plots per task and metric, each point linking its report."""
    from harness.loop import read_history

    entries = read_history(workdir)
    if html is not None:
        write_history_page(entries, workdir, runs or [], html)
    if not entries and html is None:
        raise HarnessError("no loop runs recorded yet", path=workdir / "history.jsonl")
    if not entries:
        return
    keys = list(entries[-1]["headline"])[:4]
    table = Table("loop run", "data", "fingerprint", "steps", "model calls", "gate", *keys)
    for entry in entries:
        gate = {None: "–", True: "pass", False: "FAIL"}[entry["gate_passed"]]
        table.add_row(
            entry["loop_id"],
            Path(entry["data"]).name,
            entry["data_fingerprint"][:10],
            str(entry["training_steps"]),
            str(entry["model_calls"]),
            gate,
            *(format_value(entry["headline"].get(k, {}).get("candidate")) for k in keys),
        )
    console.print(table)


def _log_loop_to_mlflow(outcome: Any, workdir: Path, tracking_uri: str | None) -> None:
    """The loop's base and tuned runs (the tuned one with its training curves) and the comparison with the gate."""
    from harness.cli.options import read_run
    from harness.cli.reports import log_comparison_to_mlflow, log_runs_to_mlflow

    pair = outcome.comparison.comparisons[0]
    paths = [workdir / "runs" / run_id / "results.json" for run_id in (pair.baseline, pair.candidate)]
    log_runs_to_mlflow([(read_run(path), path) for path in paths], tracking_uri)
    log_comparison_to_mlflow(outcome.comparison, outcome.gate, outcome.report_dir, tracking_uri)


def write_history_page(entries: list[dict[str, Any]], workdir: Path, runs_dirs: list[Path], page: Path) -> None:
    from harness.core.record import write_atomic
    from harness.loop.history import history_runs
    from reports import render_history

    for folder in runs_dirs:
        if not folder.is_dir():
            raise HarnessError("not a folder of runs", path=folder, field="--runs")
    shown = history_runs(entries, workdir, runs_dirs, page)
    if not shown:
        raise HarnessError(
            "no runs to show: no loop history here and no results.json under --runs", path=workdir / "history.jsonl"
        )
    write_atomic(page, render_history(shown))
    console.print(f"history page: {page} ({len(shown)} runs)")


def format_value(value: float | None) -> str:
    from reports.markdown import format_number

    return format_number(value)
