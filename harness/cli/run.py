"""`harness tasks` and `harness run`: list the registered tasks, evaluate a model and its adapters on them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from harness.cli.options import (
    JsonOption,
    JudgeConcurrencyOption,
    JudgeKeyOption,
    JudgeModelOption,
    JudgeTimeoutOption,
    JudgeUrlOption,
    MlflowOption,
    RubricsDirOption,
    TasksDirOption,
    TrackingUriOption,
    console,
    endpoint_from_flags,
    err_console,
    model_options,
    parse_gen_kwargs,
    user_errors,
)
from harness.cli.tables import results_table

log = logging.getLogger(__name__)


@user_errors
def list_tasks(tasks_dir: TasksDirOption = None) -> None:
    """List registered tasks: name, kind, metrics, data (local rows, or the hub dataset), description."""
    from harness.core.data import read_rows
    from harness.evaluation.catalog import find_catalog

    table = Table("task", "kind", "metrics", "data", "description")
    catalog = find_catalog(tasks_dir or [])
    for name, spec in sorted(catalog.tasks.items()):
        data = f"{len(read_rows(spec.data, spec.data_format, spec.split))} rows" if spec.data else spec.data_label
        table.add_row(name, spec.kind, ", ".join(m.name for m in spec.metrics), escape(data), spec.description)
    for name, group in sorted(catalog.groups.items()):
        members = f"group ({group.aggregate}) of {len(group.tasks)}: {', '.join(group.tasks[:4])}"
        table.add_row(name, "group", "", members + (", ..." if len(group.tasks) > 4 else ""), group.description)
    console.print(table)


@user_errors
def run(
    tasks: Annotated[str, typer.Option(help="Comma-separated task or group names (see `harness tasks`)")],
    model: Annotated[
        str,
        typer.Option(
            help="gemma-3-270m (embedded), a local checkpoint folder, a hub ID org/name[@revision], "
            "gguf:PATH or gemma-3-270m-gguf (llama.cpp in process), or openai:MODEL (an endpoint at --base-url)"
        ),
    ] = "gemma-3-270m",
    adapter: Annotated[
        list[str] | None, typer.Option(help="PEFT adapter folder or hub ID org/name[@revision]; repeat for several")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N samples per task")] = None,
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder for runs/<run-id>/results.json")] = Path("runs"),
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    dtype: Annotated[str, typer.Option(help="auto|float32|bfloat16|float16")] = "auto",
    device: Annotated[str, typer.Option(help="auto|cpu|cuda|cuda:N")] = "auto",
    quant: Annotated[str, typer.Option(help="none|nf4|int8 (bitsandbytes)")] = "none",
    attention: Annotated[str, typer.Option(help="auto|eager|sdpa|flex_attention|cudnn")] = "auto",
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the decoder (GPU: faster scoring and decoding)")
    ] = False,
    base_url: Annotated[
        str | None, typer.Option(help="openai: models: the OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    ] = None,
    api_key_env: Annotated[str, typer.Option(help="openai: models: environment variable holding the API key")] = (
        "OPENAI_API_KEY"
    ),
    concurrency: Annotated[int, typer.Option(min=1, help="openai: models: requests in flight at once")] = 8,
    request_timeout: Annotated[
        float, typer.Option(min=0.1, help="openai: models: seconds per request (a whole-reply deadline)")
    ] = 120.0,
    n_ctx: Annotated[int, typer.Option(min=16, help="gguf models: llama.cpp context size in tokens")] = 2048,
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
    num_fewshot: Annotated[
        int | None, typer.Option(min=0, help="Worked examples drawn per sample (overrides the tasks' num_fewshot)")
    ] = None,
    system_prompt: Annotated[str | None, typer.Option(help="A system prompt for every task")] = None,
    apply_chat_template: Annotated[
        bool | None,
        typer.Option(
            "--apply-chat-template/--no-apply-chat-template",
            help="Render prompts through the model's chat template (default: each task's chat_template)",
        ),
    ] = None,
    gen_kwargs: Annotated[
        str | None, typer.Option(help="Generation settings, e.g. temperature=0.7,top_p=0.9,max_new_tokens=64,stop=###")
    ] = None,
    opik: Annotated[bool, typer.Option(help="Also export each run to Opik (needs the opik extra and config)")] = False,
    mlflow: MlflowOption = False,
    tracking_uri: TrackingUriOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a model (and each --adapter over it) on tasks; write one RunResult per model."""
    from harness.api import Prompting, evaluate_each
    from harness.backends import distributed
    from harness.backends.select import ServedOptions
    from harness.cli.summaries import dumps, run_summary
    from harness.core.cache import ResultCache
    from harness.evaluation.catalog import resolve_tasks

    distributed.init_from_env()  # under torchrun / accelerate launch: samples are sharded across processes
    flags: dict[str, Any] = {
        "dtype": dtype,
        "device": device,
        "quant": quant,
        "attention": attention,
        "compile": compile_model,
    }
    model_options(model=model, **flags)  # a bad flag is a user error naming it, before anything loads
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    cache_file = (cache_path or ResultCache.default_path()) if cache else None
    judge_cache = ResultCache(cache_file)  # judgments are cached beside the model outputs
    judge = None
    specs, _ = resolve_tasks(names, tasks_dir or [])
    if any(spec.judges for spec in specs) and not skip_judges:
        endpoint = endpoint_from_flags(judge_model, judge_base_url, judge_api_key_env, judge_concurrency, judge_timeout)
        judge = _rubric_judge(endpoint, judge_cache, rubrics_dir or [], seed)
        judge.check(specs)
    runs = evaluate_each(
        model,
        names,
        adapter or [],
        tasks_dir=tasks_dir or [],
        limit=limit,
        batch_size=batch_size,
        seed=seed,
        prompting=Prompting(num_fewshot, system_prompt, parse_gen_kwargs(gen_kwargs), apply_chat_template),
        cache=cache_file or False,
        judge=judge,
        model_options=flags,
        served=ServedOptions(base_url, api_key_env, concurrency, request_timeout, n_ctx),
        console=err_console,
    )
    summaries = []
    for run_result in runs:
        if not distributed.is_main():
            continue
        results_path = run_result.write(out / run_result.run_id / "results.json")
        errors = sum(task.n_errors for task in run_result.tasks.values())
        if errors:
            log.warning("%d sample(s) got no output (each record says why; not in the metrics)", errors)
        if as_json:
            summaries.append(run_summary(run_result, results_path))
        else:
            adapter_path = run_result.spec.model.adapter_path
            label = run_result.spec.model.name + (f" + {Path(adapter_path).name}" if adapter_path else "")
            console.print(results_table(run_result, f"{label}  ({run_result.wall_seconds:.1f} s)"))
            console.print(f"results: {results_path}")
        if opik:
            from harness.cli.reports import export_opik_run

            export_opik_run(run_result, None)
        if mlflow:
            from harness.cli.reports import log_runs_to_mlflow

            log_runs_to_mlflow([(run_result, results_path)], tracking_uri)
    judge_cache.close()
    if as_json and distributed.is_main():
        print(dumps({"runs": summaries}))


def _rubric_judge(endpoint: Any, result_cache: Any, rubrics_dir: list[Path], seed: int) -> Any:
    from judges.client import JudgeClient
    from judges.scoring import RubricJudge

    return RubricJudge(JudgeClient(endpoint, result_cache), rubrics_dir, seed)
