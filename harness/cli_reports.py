"""`harness` commands that read run records: compare, gate, baselines, pairwise judging, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from harness.cli import (
    JudgeConcurrencyOption,
    JudgeKeyOption,
    JudgeModelOption,
    JudgeTimeoutOption,
    JudgeUrlOption,
    RubricsDirOption,
    app,
    console,
    endpoint_from_flags,
    headline_table,
    read_json,
    read_run,
    results_table,
    user_errors,
)
from harness.errors import HarnessError
from harness.record import RunResult

judge_app = typer.Typer(no_args_is_help=True, help="LLM-as-judge over run results.")
app.add_typer(judge_app, name="judge")


@judge_app.command("pairwise")
@user_errors
def judge_pairwise(
    run_a: Annotated[Path, typer.Argument(help="results.json of run A (e.g. the tuned model)")],
    run_b: Annotated[Path, typer.Argument(help="results.json of run B (e.g. the base model)")],
    out: Annotated[Path, typer.Option(help="Where to write the pairwise JSON")],
    rubric: Annotated[str, typer.Option(help="Rubric name or file whose criteria the judge weighs")] = "general",
    judge_model: JudgeModelOption = None,
    judge_base_url: JudgeUrlOption = None,
    judge_api_key_env: JudgeKeyOption = "OPENAI_API_KEY",
    judge_concurrency: JudgeConcurrencyOption = 4,
    judge_timeout: JudgeTimeoutOption = 60.0,
    rubrics_dir: RubricsDirOption = None,
    cache_path: Annotated[Path | None, typer.Option(help="SQLite cache file")] = None,
) -> None:
    """Judge two runs' outputs for the same prompts in both orders: win/tie/loss and position consistency."""
    from harness.cache import ResultCache
    from harness.record import write_atomic
    from judges.client import JudgeClient
    from judges.pairwise import pairwise_runs
    from judges.rubric import find_rubric

    endpoint = endpoint_from_flags(judge_model, judge_base_url, judge_api_key_env, judge_concurrency, judge_timeout)
    runs = [read_run(path) for path in (run_a, run_b)]
    client = JudgeClient(endpoint, ResultCache(cache_path or ResultCache.default_path()))
    result = pairwise_runs(runs[0], runs[1], find_rubric(rubric, rubrics_dir or []), client)
    write_atomic(out, result.model_dump_json(indent=2))
    table = Table(
        "task", "n", "win", "tie", "loss", "consistency", "errors", title=f"{run_a.parent.name} vs {run_b.parent.name}"
    )
    for name, task in result.tasks.items():
        table.add_row(
            name,
            str(task.n),
            f"{task.win_rate:.2f}",
            f"{task.tie_rate:.2f}",
            f"{task.loss_rate:.2f}",
            f"{task.position_consistency:.2f}",
            str(task.n_errors),
        )
    console.print(table)
    console.print(f"pairwise: {out}  ({result.judge_calls} judge calls)")


@app.command("compare")
@user_errors
def compare_command(
    runs: Annotated[
        list[Path], typer.Argument(help="results.json files (or baselines/NAME.json); the first is the baseline")
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.html and comparison.json")] = Path("report"),
    pairwise: Annotated[
        Path | None, typer.Option(help="Pairwise judge JSON (harness judge pairwise) to include")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Paired comparison of runs per task and metric; writes Markdown, HTML and JSON reports."""
    from harness.compare import compare_runs

    comparison = compare_runs([read_run(path) for path in runs], seed, read_json(pairwise) if pairwise else None)
    _write_reports(comparison, out, [])
    console.print(headline_table(comparison))
    console.print(f"reports: {out}/report.md  {out}/report.html  {out}/comparison.json")


@app.command("gate")
@user_errors
def gate_command(
    baseline: Annotated[Path, typer.Option(help="Baseline results.json, or a saved baseline's name")],
    candidate: Annotated[Path, typer.Option(help="Candidate results.json")],
    rules: Annotated[Path, typer.Option(help="Gate rules YAML")],
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the reports")] = Path("report"),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Exit 0 if the candidate passes every rule against the baseline, else 1; writes JUnit and Markdown."""
    from harness.compare import compare_runs
    from harness.gate import load_rules, run_gate
    from harness.record import write_atomic
    from reports.junit import render_junit

    gate_rules = load_rules(rules)
    comparison = compare_runs([read_run(_baseline_path(baseline)), read_run(candidate)], seed)
    outcomes = run_gate(gate_rules, comparison.comparisons[0])
    _write_reports(comparison, out, outcomes)
    if junit:
        write_atomic(junit, render_junit(outcomes))
    table = Table("rule", "result", "detail", title="gate")
    for outcome in outcomes:
        table.add_row(
            f"{outcome.rule.task}/{outcome.rule.metric}", "pass" if outcome.passed else "[red]FAIL[/]", outcome.message
        )
    console.print(table)
    if not all(outcome.passed for outcome in outcomes):
        raise typer.Exit(1)


export_app = typer.Typer(no_args_is_help=True, help="Send run results to other tools.")
app.add_typer(export_app, name="export")


def export_opik_run(run_result: RunResult, project: str | None) -> None:
    from reports.opik_export import export_run

    summary = export_run(run_result, project)
    console.print(f"opik: {summary.items} items in experiments {', '.join(summary.experiments.values())}")


@export_app.command("opik")
@user_errors
def export_opik(
    run: Annotated[Path, typer.Argument(help="results.json to export")],
    project: Annotated[str | None, typer.Option(help="Opik project (default: the Opik configuration's)")] = None,
) -> None:
    """Export a run to Opik: dataset, experiment with the run spec as config, per-item feedback scores."""
    export_opik_run(read_run(run), project)


baseline_app = typer.Typer(no_args_is_help=True, help="Named baselines kept as files in your repository.")
app.add_typer(baseline_app, name="baseline")
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
    from harness.record import write_atomic

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
    from harness.record import write_atomic
    from reports.html import render_html
    from reports.markdown import render_markdown

    write_atomic(out / "comparison.json", comparison.model_dump_json(indent=2))
    write_atomic(out / "report.md", render_markdown(comparison, outcomes))
    write_atomic(out / "report.html", render_html(comparison, outcomes))
