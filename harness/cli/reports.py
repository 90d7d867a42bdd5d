"""`harness` commands that read run records: compare, gate, baselines, export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.cli.options import (
    EXIT_GATE_FAILED,
    JsonOption,
    MlflowOption,
    TrackingUriOption,
    console,
    read_comparison,
    read_json,
    read_run,
    user_errors,
)
from harness.cli.tables import gate_table, headline_table, results_table
from harness.core.errors import HarnessError
from harness.core.record import RunResult

log = logging.getLogger(__name__)


@user_errors
def compare_command(
    runs: Annotated[
        list[Path], typer.Argument(help="results.json files (or baselines/NAME.json); the first is the baseline")
    ],
    out: Annotated[
        Path, typer.Option(file_okay=False, help="Folder for report.md, report.html and comparison.json")
    ] = Path("report"),
    pairwise: Annotated[
        Path | None, typer.Option(help="Pairwise judge JSON (harness judge pairwise) to include")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: JsonOption = False,
    mlflow: MlflowOption = False,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Paired comparison of runs per task and metric; writes Markdown, HTML and JSON reports."""
    from harness.comparison.compare import compare_runs

    comparison = compare_runs([read_run(path) for path in runs], seed, read_json(pairwise) if pairwise else None)
    _write_reports(comparison, out, [])
    if mlflow:
        log_comparison_to_mlflow(comparison, [], out, tracking_uri)
    if as_json:
        from harness.cli.summaries import comparison_summary, dumps

        print(dumps(comparison_summary(comparison, out)))
        return
    console.print(headline_table(comparison))
    console.print(f"reports: {out}/report.md  {out}/report.html  {out}/comparison.json")


@user_errors
def gate_command(
    baseline: Annotated[Path, typer.Option(help="Baseline results.json, or a saved baseline's name")],
    candidate: Annotated[Path, typer.Option(help="Candidate results.json")],
    rules: Annotated[Path, typer.Option(help="Gate rules YAML")],
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here")] = None,
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder for the reports")] = Path("report"),
    seed: Annotated[int, typer.Option()] = 0,
    as_json: JsonOption = False,
    mlflow: MlflowOption = False,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Exit 0 if the candidate passes every rule against the baseline, 1 if one fails, 2 if the rules are bad (a
    rule naming a task or metric the runs lack); writes JUnit and Markdown."""
    from harness.comparison.compare import compare_runs
    from harness.comparison.gate import load_rules, run_gate
    from harness.core.record import write_atomic
    from reports.junit import render_junit

    gate_rules = load_rules(rules)
    comparison = compare_runs([read_run(_baseline_path(baseline)), read_run(candidate)], seed)
    outcomes = run_gate(gate_rules, comparison.comparisons[0])
    _write_reports(comparison, out, outcomes)
    if junit:
        write_atomic(junit, render_junit(outcomes))
    if mlflow:
        log_comparison_to_mlflow(comparison, outcomes, out, tracking_uri)
    if as_json:
        from harness.cli.summaries import dumps, gate_summary

        print(dumps(gate_summary(outcomes)))
    else:
        console.print(gate_table(outcomes))
    if not all(outcome.passed for outcome in outcomes):
        raise typer.Exit(EXIT_GATE_FAILED)


export_app = typer.Typer(no_args_is_help=True, help="Send run results to other tools.")


def export_opik_run(run_result: RunResult, project: str | None) -> None:
    from reports.opik_export import export_run

    summary = export_run(run_result, project)
    console.print(f"opik: {summary.items} items in experiments {', '.join(summary.experiments.values())}")


def log_runs_to_mlflow(runs: list[tuple[RunResult, Path | None]], tracking_uri: str | None) -> None:
    """Log runs (each with its results.json, when written) to MLflow and say where."""
    from reports.mlflow_export import export_run
    from reports.mlflow_export import tracking_uri as resolve

    for run_result, path in runs:
        mlflow_id = export_run(run_result, tracking_uri, results_path=path)
        log.info("mlflow: run %s logged as %s at %s", run_result.run_id, mlflow_id, resolve(tracking_uri))


def log_comparison_to_mlflow(comparison: Any, gate: Any, report_dir: Path, tracking_uri: str | None) -> None:
    from reports.mlflow_export import export_comparison
    from reports.mlflow_export import tracking_uri as resolve

    files = [report_dir / name for name in ("report.md", "report.html", "junit.xml")]
    ids = export_comparison(comparison, gate, tracking_uri, report_files=files)
    log.info("mlflow: comparison logged as %s at %s", ", ".join(ids), resolve(tracking_uri))


@export_app.command("mlflow")
@user_errors
def export_mlflow(
    runs: Annotated[list[Path], typer.Argument(help="results.json files to log, one MLflow run each")],
    comparison: Annotated[
        Path | None, typer.Option(help="Also log a comparison: its folder (harness compare --out) or comparison.json")
    ] = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Log runs (metrics, training curves, results.json) and optionally a comparison to MLflow."""
    log_runs_to_mlflow([(read_run(path), path) for path in runs], tracking_uri)
    if comparison is not None:
        folder = comparison if comparison.is_dir() else comparison.parent
        path = comparison / "comparison.json" if comparison.is_dir() else comparison
        log_comparison_to_mlflow(read_comparison(path), [], folder, tracking_uri)


@export_app.command("opik")
@user_errors
def export_opik(
    run: Annotated[Path, typer.Argument(help="results.json to export")],
    project: Annotated[str | None, typer.Option(help="Opik project (default: the Opik configuration's)")] = None,
) -> None:
    """Export a run to Opik: dataset, experiment with the run spec as config, per-item feedback scores."""
    export_opik_run(read_run(run), project)


baseline_app = typer.Typer(no_args_is_help=True, help="Named baselines kept as files in your repository.")
BASELINE_DIR = Path("baselines")


def _baseline_path(name_or_path: Path) -> Path:
    if name_or_path.exists():
        return name_or_path
    saved = BASELINE_DIR / f"{name_or_path}.json"
    if saved.exists():
        return saved
    raise HarnessError(
        "no such run file or saved baseline",
        path=name_or_path,
        field="--baseline",
        hint=f"save one with: harness baseline save NAME RUN (kept in {BASELINE_DIR}/)",
    )


@baseline_app.command("save")
@user_errors
def baseline_save(
    name: Annotated[str, typer.Argument(help="Baseline name, e.g. main")],
    run: Annotated[Path, typer.Argument(help="results.json to keep")],
) -> None:
    """Keep a run as baselines/NAME.json so CI can compare branches against it."""
    from harness.core.record import write_atomic

    run_result = read_run(run)
    target = BASELINE_DIR / f"{name}.json"
    write_atomic(target, run_result.model_dump_json(indent=2))
    console.print(f"baseline '{name}': {target} (run {run_result.run_id})")


@baseline_app.command("show")
@user_errors
def baseline_show(name: Annotated[str, typer.Argument(help="Baseline name")]) -> None:
    """Print a saved baseline's headline metrics."""
    run_result = read_run(_baseline_path(Path(name)))
    console.print(results_table(run_result, f"baseline '{name}': run {run_result.run_id}"))


def _write_reports(comparison: Any, out: Path, outcomes: list[Any]) -> None:
    from harness.core.record import write_atomic
    from reports.html import render_html
    from reports.markdown import render_markdown

    write_atomic(out / "comparison.json", comparison.model_dump_json(indent=2))
    write_atomic(out / "report.md", render_markdown(comparison, outcomes))
    write_atomic(out / "report.html", render_html(comparison, outcomes))
