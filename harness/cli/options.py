"""What the command groups share: consoles, option types defined once, user-error handling, reading inputs."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from pydantic import ValidationError
from rich.console import Console

from harness.backends.hf import ModelOptions
from harness.core.errors import HarnessError
from harness.core.record import RunResult
from harness.core.yamlfile import first_error

# A log or a pipe gets tables at their natural width (up to LOG_WIDTH), never cut ("baseli…") or folded mid-word
# as rich does at its default 80 columns; a terminal keeps its own width.
LOG_WIDTH = 400


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else LOG_WIDTH)


console = _console()
err_console = _console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

TasksDirOption = Annotated[list[Path] | None, typer.Option("--tasks-dir", help="Extra folder of task YAML files")]
JudgeModelOption = Annotated[str | None, typer.Option(help="Judge model name at --judge-base-url")]
JudgeUrlOption = Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")]
JudgeKeyOption = Annotated[str, typer.Option(help="Environment variable holding the judge API key")]
JudgeConcurrencyOption = Annotated[int, typer.Option(min=1, help="Judge requests in flight at once")]
JudgeTimeoutOption = Annotated[float, typer.Option(min=0.1, help="Seconds per judge request")]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the headline numbers as one JSON document instead of tables")
]
MlflowOption = Annotated[
    bool, typer.Option("--mlflow", help="Also log to MLflow (the mlflow extra): see --tracking-uri")
]
TrackingUriOption = Annotated[
    str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else a local store in ./mlruns)")
]
RubricsDirOption = Annotated[list[Path] | None, typer.Option("--rubrics-dir", help="Extra folder of rubric YAML files")]


# Exit codes, the same for every command: CI tells a regression from a broken job by them.
EXIT_GATE_FAILED = 1  # a gate rule failed (or `data check --strict` found something)
EXIT_USAGE = 2  # bad input or usage: the message names the file, line and field (click's usage errors too)
EXIT_INTERNAL = 3  # anything unexpected: a bug or a broken environment, with its traceback


def user_errors(fn: F) -> F:
    """Print a HarnessError as one clear line and exit 2; anything unexpected prints its traceback and exits 3."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HarnessError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception:
            err_console.print_exception(show_locals=False)
            err_console.print("[bold red]internal error[/] (exit 3): please report it with the traceback above")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def endpoint_from_flags(
    model: str | None, base_url: str | None, api_key_env: str, concurrency: int, timeout: float
) -> Any:
    """The judge endpoint the --judge-* flags describe; both a model and a base URL are needed."""
    from judges.client import JudgeEndpoint

    if not model or not base_url:
        raise HarnessError(
            "these tasks list judges: pass --judge-model and --judge-base-url (or --skip-judges)",
            field="--judge-base-url",
        )
    return JudgeEndpoint(
        model=model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; anything else is a user error naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HarnessError(f"not readable JSON: {error}", path=path) from None
    if not isinstance(value, dict):
        raise HarnessError("expected a JSON object", path=path)
    return value


def _read_record(path: Path, read: Callable[[Path], R], what: str) -> R:
    """A record read from `path`; an unreadable one is a user error naming the file (and the field)."""
    try:
        return read(path)
    except ValidationError as error:  # also JSON cut short: pydantic parses the file
        location, message = first_error(error)
        where = f" (field {'.'.join(str(part) for part in location)})" if location else ""
        raise HarnessError(f"not a readable {what}: {message}{where}", path=path) from None
    except (OSError, ValueError) as error:
        raise HarnessError(f"not a readable {what}: {error}", path=path) from None


def read_run(path: Path) -> RunResult:
    """A RunResult from a results.json; an unreadable one is a user error naming the file."""
    return _read_record(path, RunResult.read, "results.json")


def read_comparison(path: Path) -> Any:
    """A Comparison from a comparison.json (harness compare --out)."""
    from harness.comparison.compare import Comparison

    return _read_record(
        path, lambda p: Comparison.model_validate_json(p.read_text(encoding="utf-8")), "comparison.json"
    )


def model_options(**flags: str | bool) -> ModelOptions:
    """ModelOptions from command-line flags; a bad value is a user error naming its flag."""
    flags["name"] = flags.pop("model")
    try:
        return ModelOptions.model_validate(flags)
    except ValidationError as error:
        location, message = first_error(error)
        flag = "--model" if location[0] == "name" else f"--{location[0]}"
        raise HarnessError(message, field=flag) from None


GEN_KWARG_ALIASES = {"max_gen_toks": "max_new_tokens", "until": "stop"}  # lm-evaluation-harness's names


def parse_gen_kwargs(text: str | None) -> dict[str, Any]:
    """`--gen-kwargs temperature=0.7,top_p=0.9,max_new_tokens=64,stop=###` as a dict (numbers read as numbers;
    `stop` may repeat; lm-evaluation-harness's max_gen_toks and until are accepted)."""
    if not text:
        return {}
    parsed: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = GEN_KWARG_ALIASES.get(key.strip(), key.strip())
        if not sep or not key:
            raise HarnessError(f"'{item}' is not key=value", field="--gen-kwargs")
        if key == "stop":
            parsed.setdefault("stop", []).append(value.encode().decode("unicode_escape"))
            continue
        try:
            parsed[key] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise HarnessError(f"'{key}' needs a number, not '{value}'", field="--gen-kwargs") from None
    known = {"max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop"}
    unknown = sorted(set(parsed) - known)
    if unknown:
        raise HarnessError(
            f"unknown generation setting(s): {', '.join(unknown)}",
            field="--gen-kwargs",
            hint=f"known: {', '.join(sorted(known))}",
        )
    return parsed
