"""How much the CLI says on stderr: `-q` (warnings and errors only, no progress), the default (progress and status
lines), `-v` (the project's debug lines: what was loaded, cached, started), `-vv` (also the libraries' debug logs:
transformers, datasets, httpx, openai), or `--log-level` (or HARNESS_LOG_LEVEL) naming a level outright.

Results (tables, paths, `--json`) go to stdout at every level: they are the command's output, not its log."""

from __future__ import annotations

import enum
import logging
import os
import sys
import warnings
from typing import Any

from rich.logging import RichHandler

from harness.cli.options import err_console
from harness.core import progress

PROJECT_LOGGERS = ("harness", "judges", "adapters", "reports")


class LogLevel(str, enum.Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def level_from_flags(verbose: int, quiet: bool, log_level: LogLevel | None) -> int:
    """The project's log level: --log-level wins over -v/-q; INFO by default."""
    if log_level is not None:
        return int(getattr(logging, log_level.value.upper()))
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test runner swaps it), not the stream at set-up."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


class PlainFormatter(logging.Formatter):
    """For logs and CI: a status line (INFO) as it is; anything else with its level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname} {record.name}: {message}"


def configure(level: int, library_debug: bool = False) -> None:
    """Route the project's loggers (and Python warnings) to stderr at `level`; libraries stay at WARNING (ERROR under
    -q) unless `library_debug`. Progress shows only at INFO or below."""
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    else:
        handler = StderrHandler()
        handler.setFormatter(PlainFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "harness_cli", False)]:
        root.removeHandler(old)
    handler.harness_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    library_level = "debug" if library_debug else "warning" if level <= logging.INFO else "error"
    root.setLevel(library_level.upper())
    for variable in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"):  # read when each configures its own logger
        os.environ[variable] = library_level
    os.environ["MLFLOW_LOGGING_LEVEL"] = library_level.upper()
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
    if level > logging.WARNING:
        warnings.simplefilter("ignore")
    progress.set_enabled(level <= logging.INFO)
    if level > logging.INFO:  # the libraries' own bars (loading weights, downloads)
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


__all__ = ["LogLevel", "configure", "level_from_flags"]
