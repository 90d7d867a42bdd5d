"""The `harness` command line: one module per command group (run, reports, judge, train, loop), options defined
once in harness.cli.options. Each command is a thin layer over the packages below it."""

import sys
from typing import Annotated

import typer

from harness.cli import judge, logs, loop, reports, run, train

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Evaluate base and fine-tuned language models.\n\n"
    "Exit codes: 0 ok, 1 a gate rule failed, 2 bad input or usage, 3 internal error.",
)


@app.callback()
def verbosity(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Debug lines (-vv: the libraries' too)")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only: no progress")] = False,
    log_level: Annotated[
        logs.LogLevel | None,
        typer.Option(case_sensitive=False, envvar="HARNESS_LOG_LEVEL", help="A log level outright (beats -v/-q)"),
    ] = None,
) -> None:
    """Evaluate base and fine-tuned language models."""
    logs.configure(logs.level_from_flags(verbose, quiet, log_level), library_debug=verbose > 1)


app.command("tasks")(run.list_tasks)
app.command("run")(run.run)
app.command("compare")(reports.compare_command)
app.command("gate")(reports.gate_command)
app.add_typer(reports.baseline_app, name="baseline")
app.add_typer(reports.export_app, name="export")
app.add_typer(judge.judge_app, name="judge")
app.command("train")(train.train_command)
app.command("merge")(train.merge_command)
app.add_typer(train.data_app, name="data")
app.command("loop")(loop.loop_command)
app.command("history")(loop.history_command)


def main() -> None:
    sys.exit(app())


__all__ = ["app", "main"]
