"""`harness judge`: LLM-as-judge over run records (pairwise, both orders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harness.cli.options import (
    JudgeConcurrencyOption,
    JudgeKeyOption,
    JudgeModelOption,
    JudgeTimeoutOption,
    JudgeUrlOption,
    RubricsDirOption,
    console,
    endpoint_from_flags,
    err_console,
    read_run,
    user_errors,
)
from harness.core.errors import HarnessError

judge_app = typer.Typer(no_args_is_help=True, help="LLM-as-judge over run results.")


@judge_app.command("pairwise")
@user_errors
def judge_pairwise(
    run_a: Annotated[Path, typer.Argument(help="results.json of run A (e.g. the tuned model)")],
    run_b: Annotated[Path, typer.Argument(help="results.json of run B (e.g. the base model)")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="Where to write the pairwise JSON")],
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
    from harness.core.cache import ResultCache
    from harness.core.record import write_atomic
    from judges.client import JudgeClient
    from judges.pairwise import pairwise_runs
    from judges.rubric import find_rubric

    endpoint = endpoint_from_flags(judge_model, judge_base_url, judge_api_key_env, judge_concurrency, judge_timeout)
    runs = [read_run(path) for path in (run_a, run_b)]
    client = JudgeClient(endpoint, ResultCache(cache_path or ResultCache.default_path()))
    result = pairwise_runs(runs[0], runs[1], find_rubric(rubric, rubrics_dir or []), client, err_console)
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
    errors = [item.error for task in result.tasks.values() for item in task.items if item.error]
    if errors and not any(task.n for task in result.tasks.values()):
        raise HarnessError(
            f"no pair was judged: all {len(errors)} failed (the first: {errors[0]})", field="--judge-base-url"
        )
