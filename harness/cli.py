"""The `harness` command line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from harness.errors import HarnessError
from harness.models import ModelOptions
from harness.record import RunResult

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
    seed: Annotated[int, typer.Option()] = 0,
    cache: Annotated[bool, typer.Option(help="Reuse and store per-sample results")] = True,
    cache_path: Annotated[Path | None, typer.Option(help="SQLite cache file (default: the user cache dir)")] = None,
    tasks_dir: TasksDirOption = None,
) -> None:
    """Evaluate a model (and each --adapter over it) on tasks; write one RunResult per model."""
    from harness.cache import ResultCache
    from harness.models import load_model
    from harness.registry import get_tasks
    from harness.runner import RunOptions, evaluate, prepare_tasks

    options = _model_options(model=model, dtype=dtype, device=device, quant=quant)
    run_options = RunOptions(limit=limit, batch_size=batch_size, seed=seed)
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    prepared = prepare_tasks(get_tasks(names, tasks_dir or []), limit)
    loaded = load_model(options)
    adapter_names: list[str | None] = [loaded.load_adapter(path) for path in adapter or []] or [None]
    result_cache = ResultCache(cache_path or ResultCache.default_path()) if cache else ResultCache(None)
    for adapter_name in adapter_names:
        with loaded.activate(adapter_name):
            run_result = evaluate(loaded, prepared, result_cache, run_options, err_console)
        results_path = run_result.write(out / run_result.run_id / "results.json")
        label = f"{model}" + (f" + {loaded.adapters[adapter_name].path.name}" if adapter_name else "")
        console.print(results_table(run_result, f"{label}  ({run_result.wall_seconds:.1f} s)"))
        console.print(f"results: {results_path}")
    result_cache.close()


def _model_options(**flags: str) -> ModelOptions:
    flags["name"] = flags.pop("model")
    try:
        return ModelOptions.model_validate(flags)
    except ValidationError as error:
        first = error.errors()[0]
        flag = "--model" if first["loc"][0] == "name" else f"--{first['loc'][0]}"
        raise HarnessError(first["msg"], field=flag) from None


def main() -> None:
    sys.exit(app())
