"""The `harness` command line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Column, Table

from harness.errors import HarnessError
from harness.models import ModelOptions
from harness.record import RunResult
from harness.yamlfile import first_error

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Evaluate base and fine-tuned language models.",
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

TasksDirOption = Annotated[list[Path] | None, typer.Option("--tasks-dir", help="Extra folder of task YAML files")]
JudgeModelOption = Annotated[str | None, typer.Option(help="Judge model name at --judge-base-url")]
JudgeUrlOption = Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")]
JudgeKeyOption = Annotated[str, typer.Option(help="Environment variable holding the judge API key")]
JudgeConcurrencyOption = Annotated[int, typer.Option(min=1, help="Judge requests in flight at once")]
JudgeTimeoutOption = Annotated[float, typer.Option(min=0.1, help="Seconds per judge request")]
RubricsDirOption = Annotated[list[Path] | None, typer.Option("--rubrics-dir", help="Extra folder of rubric YAML files")]


def user_errors(fn: F) -> F:
    """Print a HarnessError as one clear line and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HarnessError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.command("tasks")
@user_errors
def list_tasks(tasks_dir: TasksDirOption = None) -> None:
    """List registered tasks: name, kind, metrics, size, description."""
    from harness.data import read_rows
    from harness.registry import find_tasks

    table = Table("task", "kind", "metrics", "size", "description")
    for name, spec in sorted(find_tasks(tasks_dir or []).items()):
        size = str(len(read_rows(spec.data, spec.data_format)))
        table.add_row(name, spec.kind, ", ".join(m.name for m in spec.metrics), size, spec.description)
    console.print(table)


def _format_metric(value: float, stderr: float | None) -> str:
    text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return f"{text} ± {stderr:.2g}" if stderr is not None else text


def results_table(run_result: RunResult, title: str) -> Table:
    """One row per task and metric, with bootstrap standard errors."""
    table = Table("task", "metric", "value", "n", "cached", title=title)
    for task_name, task_result in run_result.tasks.items():
        for key, metric_value in task_result.metrics.items():
            table.add_row(
                task_name,
                key,
                _format_metric(metric_value.value, metric_value.stderr),
                str(task_result.n_samples),
                str(task_result.n_cached),
            )
    return table


@app.command("run")
@user_errors
def run(
    tasks: Annotated[str, typer.Option(help="Comma-separated task names (see `harness tasks`)")],
    model: Annotated[
        str, typer.Option(help="'gemma-3-270m' (embedded) or a local HF checkpoint folder")
    ] = "gemma-3-270m",
    adapter: Annotated[list[Path] | None, typer.Option(help="PEFT adapter folder; repeat for several")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N samples per task")] = None,
    out: Annotated[Path, typer.Option(help="Folder for runs/<run-id>/results.json")] = Path("runs"),
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    dtype: Annotated[str, typer.Option(help="auto|float32|bfloat16|float16")] = "auto",
    device: Annotated[str, typer.Option(help="auto|cpu|cuda|cuda:N")] = "auto",
    quant: Annotated[str, typer.Option(help="none|nf4|int8 (bitsandbytes)")] = "none",
    attention: Annotated[str, typer.Option(help="auto|eager|sdpa|flex_attention|cudnn")] = "auto",
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the decoder (GPU: faster scoring and decoding)")
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    cache: Annotated[bool, typer.Option(help="Reuse and store per-sample results")] = True,
    cache_path: Annotated[Path | None, typer.Option(help="SQLite cache file (default: the user cache dir)")] = None,
    tasks_dir: TasksDirOption = None,
    judge_model: JudgeModelOption = None,
    judge_base_url: JudgeUrlOption = None,
    judge_api_key_env: JudgeKeyOption = "OPENAI_API_KEY",
    judge_concurrency: JudgeConcurrencyOption = 4,
    judge_timeout: JudgeTimeoutOption = 60.0,
    rubrics_dir: RubricsDirOption = None,
    skip_judges: Annotated[bool, typer.Option(help="Run tasks that list judges without judging")] = False,
    opik: Annotated[bool, typer.Option(help="Also export each run to Opik (needs the opik extra and config)")] = False,
) -> None:
    """Evaluate a model (and each --adapter over it) on tasks; write one RunResult per model."""
    from harness import distributed
    from harness.cache import ResultCache
    from harness.models import load_model
    from harness.registry import get_tasks
    from harness.runner import RunOptions, evaluate, prepare_tasks

    distributed.init_from_env()  # under torchrun / accelerate launch: samples are sharded across processes
    options = _model_options(
        model=model, dtype=dtype, device=device, quant=quant, attention=attention, compile=compile_model
    )
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    specs = get_tasks(names, tasks_dir or [])
    prepared = prepare_tasks(specs, limit)
    result_cache = ResultCache(cache_path or ResultCache.default_path()) if cache else ResultCache(None)
    judge = None
    if any(spec.judges for spec in specs) and not skip_judges:
        endpoint = endpoint_from_flags(judge_model, judge_base_url, judge_api_key_env, judge_concurrency, judge_timeout)
        judge = _rubric_judge(endpoint, result_cache, rubrics_dir or [], seed)
        judge.check(specs)
    run_options = RunOptions(limit=limit, batch_size=batch_size, seed=seed, judge=judge)
    loaded = load_model(options)
    adapter_names: list[str | None] = [loaded.load_adapter(path) for path in adapter or []] or [None]
    for adapter_name in adapter_names:
        with loaded.activate(adapter_name):
            run_result = evaluate(loaded, prepared, result_cache, run_options, err_console)
        if not distributed.is_main():
            continue
        results_path = run_result.write(out / run_result.run_id / "results.json")
        label = f"{model}" + (f" + {loaded.adapters[adapter_name].path.name}" if adapter_name else "")
        console.print(results_table(run_result, f"{label}  ({run_result.wall_seconds:.1f} s)"))
        console.print(f"results: {results_path}")
        if opik:
            from harness.cli_reports import export_opik_run

            export_opik_run(run_result, None)
    result_cache.close()


def endpoint_from_flags(
    model: str | None, base_url: str | None, api_key_env: str, concurrency: int, timeout: float
) -> Any:
    from judges.client import JudgeEndpoint

    if not model or not base_url:
        raise HarnessError(
            "these tasks list judges: pass --judge-model and --judge-base-url (or --skip-judges)",
            field="--judge-base-url",
        )
    return JudgeEndpoint(
        model=model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout
    )


def _rubric_judge(endpoint: Any, result_cache: Any, rubrics_dir: list[Path], seed: int) -> Any:
    from judges.client import JudgeClient
    from judges.scoring import RubricJudge

    return RubricJudge(JudgeClient(endpoint, result_cache), rubrics_dir, seed)


def headline_table(comparison: Any) -> Table:
    from reports.markdown import format_number, significance_marker

    table = Table("baseline", "candidate", "delta", "95% CI", "p", "")
    # Task and metric names wrap rather than being cut to "notice…" in a narrow terminal.
    table.columns.insert(0, Column("metric", overflow="fold"))
    table.columns.insert(0, Column("task", overflow="fold"))
    for run_comparison in comparison.comparisons:
        for task in run_comparison.tasks.values():
            for m in task.metrics:
                table.add_row(
                    task.task,
                    m.metric,
                    format_number(m.baseline),
                    format_number(m.candidate),
                    f"{m.delta:+.4g}",
                    f"[{format_number(m.ci_low)}, {format_number(m.ci_high)}]",
                    format_number(m.p_value),
                    significance_marker(m),
                )
    return table


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HarnessError(f"not readable JSON: {error}", path=path) from None
    if not isinstance(value, dict):
        raise HarnessError("expected a JSON object", path=path)
    return value


def read_run(path: Path) -> RunResult:
    from pydantic import ValidationError

    try:
        return RunResult.read(path)
    except (OSError, ValueError, ValidationError) as error:
        raise HarnessError(f"not a readable results.json: {str(error).splitlines()[0]}", path=path) from None


def _model_options(**flags: str | bool) -> ModelOptions:
    flags["name"] = flags.pop("model")
    try:
        return ModelOptions.model_validate(flags)
    except ValidationError as error:
        location, message = first_error(error)
        flag = "--model" if location[0] == "name" else f"--{location[0]}"
        raise HarnessError(message, field=flag) from None


def main() -> None:
    sys.exit(app())


# Sub-commands register on `app` when imported.
from harness import cli_reports, cli_train  # noqa: E402, F401
