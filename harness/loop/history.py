"""The loop's history: one JSON line per `harness loop` run in its working folder (history.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.record import write_atomic

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
