"""Progress that shows where people look: a live bar on a terminal, and in a log or CI (not a terminal) one line per
task every LOG_INTERVAL seconds and when it finishes, with its count, rate and time left, so that a long step is
never silent until it ends."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

LOG_INTERVAL = 30.0  # seconds between a task's log lines
_enabled = True  # off under the CLI's -q


def set_enabled(enabled: bool) -> None:
    """Show progress (the default) or none at all, whatever the caller asks."""
    global _enabled
    _enabled = enabled


def _value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


class LogProgress(Progress):
    """A rich Progress that draws nothing live but prints periodic lines (for consoles that are not terminals)."""

    def __init__(self, *columns: str | ProgressColumn, console: Console, interval: float = LOG_INTERVAL, **kw: Any):
        super().__init__(*columns, console=console, **{**kw, "disable": True})
        self.log_console = console
        self.quiet = bool(kw.get("disable", False))
        self.interval = interval
        self.last_logged: dict[TaskID, float] = {}

    def _log(self, task_id: TaskID, force: bool = False) -> None:
        task = self._tasks[task_id]
        now = time.monotonic()
        if self.quiet or (not force and now - self.last_logged.get(task_id, task.start_time or now) < self.interval):
            return
        self.last_logged[task_id] = now
        total = f"/{task.total:g}" if task.total is not None else ""
        parts = [f"{task.description} {task.completed:g}{total}"]
        if task.total:
            parts[0] += f" ({100 * task.completed / task.total:.0f}%)"
        if task.speed:
            parts.append(f"{task.speed:.3g}/s")
        if task.time_remaining is not None and not task.finished:
            parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(task.time_remaining))}")
        parts += [f"{key} {_value(value)}" for key, value in task.fields.items()]
        self.log_console.print(", ".join(parts), highlight=False, soft_wrap=True)

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._log(task_id, force=True)
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id, force=self._tasks[task_id].finished)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id, force=self._tasks[task_id].finished)


def counted_columns() -> tuple[ProgressColumn, ...]:
    """The usual columns: the task's name, a bar, done of total, and the time left."""
    return TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()


def progress(*columns: str | ProgressColumn, console: Console, disable: bool = False) -> Progress:
    """Live bars on a terminal, periodic log lines elsewhere; nothing when progress is switched off. Without
    columns, counted_columns()."""
    columns = columns or counted_columns()
    disable = disable or not _enabled
    if console.is_terminal:
        return Progress(*columns, console=console, disable=disable)
    return LogProgress(*columns, console=console, disable=disable)
