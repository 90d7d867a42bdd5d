"""Per-sample result cache in SQLite, keyed by content fingerprints.

Every finished batch is committed at once, so a run killed at any point keeps what it finished; WAL mode lets
several processes share the file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.fingerprint import hash_json
from harness.paths import cache_dir


class ResultCache:
    """A key -> JSON value store; `None` path gives a cache that remembers nothing (`--no-cache`)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()

    @staticmethod
    def default_path() -> Path:
        return cache_dir() / "results.sqlite"

    @staticmethod
    def key(**parts: Any) -> str:
        return hash_json(parts)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        if self._db is None:
            return {}
        wanted = list(keys)
        found: dict[str, Any] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, value FROM results WHERE key IN ({marks})"
            found.update({key: json.loads(value) for key, value in self._db.execute(query, chunk)})
        return found

    def put_many(self, items: Mapping[str, Any]) -> None:
        if self._db is None:
            return
        rows = [(key, json.dumps(value)) for key, value in items.items()]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", rows)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
