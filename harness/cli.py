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
    from harness.cache import ResultCache
    from harness.models import load_model
    from harness.registry import get_tasks
    from harness.runner import RunOptions, evaluate, prepare_tasks

    options = _model_options(model=model, dtype=dtype, device=device, quant=quant)
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    specs = get_tasks(names, tasks_dir or [])
    prepared = prepare_tasks(specs, limit)
    result_cache = ResultCache(cache_path or ResultCache.default_path()) if cache else ResultCache(None)
    judge = None
    if any(spec.judges for spec in specs) and not skip_judges:
        endpoint = _judge_endpoint(judge_model, judge_base_url, judge_api_key_env, judge_concurrency, judge_timeout)
        judge = _rubric_judge(endpoint, result_cache, rubrics_dir or [], seed)
        judge.check(specs)
    run_options = RunOptions(limit=limit, batch_size=batch_size, seed=seed, judge=judge)
    loaded = load_model(options)
    adapter_names: list[str | None] = [loaded.load_adapter(path) for path in adapter or []] or [None]
    for adapter_name in adapter_names:
        with loaded.activate(adapter_name):
            run_result = evaluate(loaded, prepared, result_cache, run_options, err_console)
        results_path = run_result.write(out / run_result.run_id / "results.json")
        label = f"{model}" + (f" + {loaded.adapters[adapter_name].path.name}" if adapter_name else "")
        console.print(results_table(run_result, f"{label}  ({run_result.wall_seconds:.1f} s)"))
        console.print(f"results: {results_path}")
        if opik:
            _export_opik(run_result, None)
    result_cache.close()


data_app = typer.Typer(no_args_is_help=True, help="Check training data.")
app.add_typer(data_app, name="data")
judge_app = typer.Typer(no_args_is_help=True, help="LLM-as-judge over run results.")
app.add_typer(judge_app, name="judge")


def _judge_endpoint(model: str | None, base_url: str | None, api_key_env: str, concurrency: int, timeout: float) -> Any:
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

    endpoint = _judge_endpoint(judge_model, judge_base_url, judge_api_key_env, judge_concurrency, judge_timeout)
    runs = [_read_run(path) for path in (run_a, run_b)]
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

    comparison = compare_runs([_read_run(path) for path in runs], seed, _read_json(pairwise) if pairwise else None)
    _write_reports(comparison, out, [])
    console.print(_headline_table(comparison))
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
    comparison = compare_runs([_read_run(_baseline_path(baseline)), _read_run(candidate)], seed)
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


@app.command("loop")
@user_errors
def loop_command(
    data: Annotated[Path, typer.Option(help="Training data file")],
    suite: Annotated[Path, typer.Option(help="Suite YAML: tasks, forgetting tasks, pairwise judge, gate")],
    train_config: Annotated[Path | None, typer.Option(help="Training config YAML")] = None,
    gate: Annotated[Path | None, typer.Option(help="Gate rules (default: the suite's)")] = None,
    judge: Annotated[str | None, typer.Option(help="'local' (starts SmolLM2 on 127.0.0.1) or a base URL")] = None,
    judge_model: JudgeModelOption = None,
    judge_api_key_env: JudgeKeyOption = "OPENAI_API_KEY",
    workdir: Annotated[Path, typer.Option(help="Adapters, runs, reports, cache and history")] = Path("loop"),
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
) -> None:
    """Train (or reuse) an adapter on --data, evaluate base and tuned on the suite, compare, report, gate."""
    from adapters.config import load_train_config
    from harness.loop import LoopOptions, run_loop
    from harness.suite import load_suite

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
    console.print(_headline_table(outcome.comparison))
    console.print(
        f"training steps: {outcome.training_steps}   model calls: {outcome.model_calls}   "
        f"judge calls: {outcome.judge_calls}"
    )
    console.print(f"report: {outcome.report_dir / 'report.html'}  (Markdown: {outcome.report_dir / 'report.md'})")
    if outcome.gate:
        console.print(f"gate: {'passed' if outcome.passed else '[red]FAILED[/]'}")
        if not outcome.passed:
            raise typer.Exit(1)


@app.command("history")
@user_errors
def history_command(
    workdir: Annotated[Path, typer.Option(help="The loop's working folder")] = Path("loop"),
) -> None:
    """Past loop runs: when, which data, whether it trained, and headline metrics."""
    from harness.loop import read_history

    entries = read_history(workdir)
    if not entries:
        raise HarnessError("no loop runs recorded yet", path=workdir / "history.jsonl")
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


def format_value(value: float | None) -> str:
    from reports.markdown import format_number

    return format_number(value)


export_app = typer.Typer(no_args_is_help=True, help="Send run results to other tools.")
app.add_typer(export_app, name="export")


def _export_opik(run_result: RunResult, project: str | None) -> None:
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
    _export_opik(_read_run(run), project)


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

    run_result = _read_run(run)
    target = BASELINE_DIR / f"{name}.json"
    write_atomic(target, run_result.model_dump_json(indent=2))
    console.print(f"baseline '{name}': {target} (run {run_result.run_id})")


@baseline_app.command("show")
@user_errors
def baseline_show(name: Annotated[str, typer.Argument(help="Baseline name")]) -> None:
    """Print a saved baseline's headline metrics."""
    run_result = _read_run(_baseline_path(Path(name)))
    console.print(results_table(run_result, f"baseline '{name}': run {run_result.run_id}"))


def _write_reports(comparison: Any, out: Path, outcomes: list[Any]) -> None:
    from harness.record import write_atomic
    from reports.html import render_html
    from reports.markdown import render_markdown

    write_atomic(out / "comparison.json", comparison.model_dump_json(indent=2))
    write_atomic(out / "report.md", render_markdown(comparison, outcomes))
    write_atomic(out / "report.html", render_html(comparison, outcomes))


def _headline_table(comparison: Any) -> Table:
    from reports.markdown import format_number, significance_marker

    table = Table("task", "metric", "baseline", "candidate", "delta", "95% CI", "p", "")
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HarnessError(f"not readable JSON: {error}", path=path) from None
    if not isinstance(value, dict):
        raise HarnessError("expected a JSON object", path=path)
    return value


def _read_run(path: Path) -> RunResult:
    from pydantic import ValidationError

    try:
        return RunResult.read(path)
    except (OSError, ValueError, ValidationError) as error:
        raise HarnessError(f"not a readable results.json: {str(error).splitlines()[0]}", path=path) from None


@app.command("train")
@user_errors
def train_command(
    data: Annotated[Path, typer.Option(help="Training data: JSONL, CSV, parquet or a saved dataset dir")],
    out: Annotated[Path, typer.Option(help="Adapter folder to write")],
    eval_data: Annotated[Path | None, typer.Option(help="Held-out data (default: a split of --data)")] = None,
    model: Annotated[str | None, typer.Option(help="Base model (default: config, else gemma-3-270m)")] = None,
    config: Annotated[Path | None, typer.Option(help="Training config YAML")] = None,
    quant: Annotated[str | None, typer.Option(help="nf4 (QLoRA, default) or none (plain LoRA)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    train_on_prompt: Annotated[bool | None, typer.Option(help="Put loss on prompt tokens too")] = None,
    skip_bad_rows: Annotated[bool | None, typer.Option(help="Drop malformed rows (counted) instead of failing")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out")] = False,
    tasks_dir: TasksDirOption = None,
) -> None:
    """Fine-tune a LoRA / QLoRA adapter; writes PEFT safetensors and manifest.json into --out."""
    from adapters.config import load_train_config
    from adapters.trainer import train

    overrides = {
        "model": model,
        "quant": quant,
        "max_steps": max_steps,
        "seed": seed,
        "train_on_prompt": train_on_prompt,
        "skip_bad_rows": skip_bad_rows,
    }
    train_config = load_train_config(config, overrides)
    _register_task_dirs(tasks_dir)
    adapter_dir = train(train_config, data, out, eval_path=eval_data, resume=resume, console=err_console)
    manifest = json.loads((adapter_dir / "manifest.json").read_text())
    console.print(
        f"adapter: {adapter_dir}  steps {manifest['steps']}  best eval loss {manifest['best_eval_loss']}"
        f"  {manifest['tokens_per_second']:.0f} tok/s  {manifest['wall_seconds']:.1f} s"
    )


@app.command("merge")
@user_errors
def merge_command(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder")],
    out: Annotated[Path, typer.Option(help="Folder for the merged checkpoint")],
    model: Annotated[str | None, typer.Option(help="Base model (default: from the adapter's manifest)")] = None,
    dtype: Annotated[str, typer.Option(help="float32|bfloat16|float16")] = "float32",
) -> None:
    """Merge an adapter into its dequantized base and save safetensors."""
    from adapters.merge import merge

    console.print(f"merged: {merge(adapter, out, model, dtype)}")


@data_app.command("check")
@user_errors
def data_check(
    file: Annotated[Path, typer.Argument(help="Training data file")],
    against_tasks: Annotated[str, typer.Option(help="Comma-separated eval tasks to check for leakage")] = "",
    max_seq_len: Annotated[int, typer.Option()] = 512,
    data_format: Annotated[str, typer.Option(help="auto|alpaca|messages|prompt_completion|text")] = "auto",
    strict: Annotated[bool, typer.Option(help="Exit 1 when any check finds something")] = False,
    tasks_dir: TasksDirOption = None,
) -> None:
    """Duplicates, empty or over-long rows, and n-gram leakage into eval tasks."""
    from adapters.checks import check_examples
    from adapters.formats import load_examples
    from adapters.tokenize import tokenize_example
    from harness.models import ModelOptions, load_model

    _register_task_dirs(tasks_dir)
    examples, _ = load_examples(file, data_format)  # type: ignore[arg-type]
    tokenizer = load_model(ModelOptions()).tokenizer
    lengths = [len(tokenize_example(e, tokenizer, 10**9, train_on_prompt=True).input_ids) for e in examples]
    tasks = [name.strip() for name in against_tasks.split(",") if name.strip()]
    report = check_examples(examples, lengths, max_seq_len, tasks)
    table = Table("check", "rows", "lines", title=f"{file}: {report.n_rows} rows")
    for label, items in (
        ("exact duplicates", report.exact_duplicates),
        ("normalised duplicates", report.normalized_duplicates),
        ("over max_seq_len", report.over_long),
        ("leaked into eval tasks", report.leaked),
    ):
        table.add_row(label, str(len(items)), ", ".join(f"{a} ({b})" for a, b in items[:10]))
    console.print(table)
    if strict and not report.clean:
        raise typer.Exit(1)


def _register_task_dirs(tasks_dir: list[Path] | None) -> None:
    from harness.registry import add_search_path

    for folder in tasks_dir or []:
        add_search_path(folder)


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
