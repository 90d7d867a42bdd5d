"""`harness` commands that train: train, merge, data check, loop, history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harness.cli import (
    JudgeKeyOption,
    JudgeModelOption,
    TasksDirOption,
    app,
    console,
    err_console,
    headline_table,
    user_errors,
)
from harness.errors import HarnessError

data_app = typer.Typer(no_args_is_help=True, help="Check training data.")
app.add_typer(data_app, name="data")


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
    best = manifest["best_eval_loss"]
    evaluated = f"best eval loss {best:.4f}" if best is not None else "no eval rows"
    console.print(
        f"adapter: {adapter_dir}  steps {manifest['steps']}  {evaluated}"
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

    if dtype not in ("float32", "bfloat16", "float16"):
        raise HarnessError(f"'{dtype}' is not one of float32, bfloat16, float16", field="--dtype")

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
    console.print(headline_table(outcome.comparison))
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
