"""`harness` commands that train: train, merge, data check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harness.cli.options import EXIT_GATE_FAILED, TasksDirOption, console, err_console, user_errors
from harness.core.errors import HarnessError

data_app = typer.Typer(no_args_is_help=True, help="Check training data.")


@user_errors
def train_command(
    data: Annotated[Path, typer.Option(help="Training data: JSONL, CSV, parquet or a saved dataset dir")],
    out: Annotated[Path, typer.Option(file_okay=False, help="Adapter folder to write")],
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
    from harness.api import train

    overrides = {
        "model": model,
        "quant": quant,
        "max_steps": max_steps,
        "seed": seed,
        "train_on_prompt": train_on_prompt,
        "skip_bad_rows": skip_bad_rows,
    }
    adapter = train(
        data, out, config=config, eval_data=eval_data, resume=resume, tasks_dir=tasks_dir or [], console=err_console,
        **overrides,
    )  # fmt: skip
    manifest = adapter.manifest
    evaluated = f"best eval loss {adapter.best_eval_loss:.4f}" if adapter.best_eval_loss is not None else "no eval rows"
    console.print(
        f"adapter: {adapter.path}  steps {adapter.steps}  {evaluated}"
        f"  {manifest['tokens_per_second']:.0f} tok/s  {manifest['wall_seconds']:.1f} s"
    )
    print_data_findings(manifest)


def print_data_findings(manifest: dict) -> None:
    """What the data checks found and did (duplicates, leakage, over-long and bad rows), where people look."""
    from reports.markdown import data_findings

    console.print("training data: " + "; ".join(data_findings(manifest)), highlight=False)


@user_errors
def merge_command(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder")],
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder for the merged checkpoint")],
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
    from harness.backends.hf import ModelOptions, load_model
    from harness.core.progress import progress

    register_task_dirs(tasks_dir)
    examples, _ = load_examples(file, data_format)  # type: ignore[arg-type]
    tokenizer = load_model(ModelOptions()).tokenizer
    lengths = []
    with progress(console=err_console) as bars:
        bar = bars.add_task("tokenize rows", total=len(examples))
        for example in examples:
            lengths.append(len(tokenize_example(example, tokenizer, 10**9, train_on_prompt=True).input_ids))
            bars.advance(bar)
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
        raise typer.Exit(EXIT_GATE_FAILED)


def register_task_dirs(tasks_dir: list[Path] | None) -> None:
    from harness.evaluation.catalog import add_search_path

    for folder in tasks_dir or []:
        add_search_path(folder)
