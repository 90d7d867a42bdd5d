"""The loop's history: one JSON line per `harness loop` run in its working folder (history.jsonl)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.comparison.compare import run_label
from harness.core.errors import HarnessError
from harness.core.record import RunResult, write_atomic
from reports.history_html import HistoryRun

HISTORY = "history.jsonl"


def read_history(workdir: Path) -> list[dict[str, Any]]:
    """Every loop run recorded in `workdir`, oldest first."""
    path = workdir / HISTORY
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise HarnessError(
                f"not a JSON line: {error.msg}", path=path, line=number, hint="fix or delete that line"
            ) from None
    return entries


def write_history(workdir: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the history with `entries` (atomically: a killed loop leaves the old file whole)."""
    write_atomic(workdir / HISTORY, "".join(json.dumps(entry) + "\n" for entry in entries))


def _link(target: Path, page: Path) -> str:
    return os.path.relpath(target.resolve(), page.resolve().parent)


def history_runs(entries: list[dict[str, Any]], workdir: Path, runs_dirs: list[Path], page: Path) -> list[HistoryRun]:
    """Every run to show on the history page: the base and tuned runs of the loop's history `entries` (series
    "base" / "tuned", linking the loop run's report) and every results.json under `runs_dirs` (a series per model
    and adapter, linking the file). Links are relative to `page`."""
    shown: list[HistoryRun] = []
    seen: set[Path] = set()
    for entry in entries:
        report = Path(entry["report"]) / "report.html"
        for series, key in (("base", "base_run"), ("tuned", "tuned_run")):
            path = workdir / "runs" / entry[key] / "results.json"
            if path.is_file():
                seen.add(path.resolve())
                shown.append(HistoryRun(RunResult.read(path), series, _link(report, page), entry["loop_id"]))
    for folder in runs_dirs:
        for path in sorted(folder.rglob("results.json")):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                run = RunResult.read(path)
                shown.append(HistoryRun(run, run_label(run), _link(path, page)))
    return shown
