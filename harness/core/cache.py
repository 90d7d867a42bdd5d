"""Per-sample result cache in SQLite, keyed by content fingerprints.

Every finished batch is committed at once, so a run killed at any point keeps what it finished; WAL mode lets
several processes share the file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_json
from harness.core.paths import cache_dir


class ResultCache:
    """A key -> JSON value store; `None` path gives a cache that remembers nothing (`--no-cache`)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=60)
            try:
                self._set_up(self._db)
            except sqlite3.DatabaseError as error:  # not a database, or a damaged one
                self._db.close()
                raise HarnessError(
                    f"the result cache cannot be opened: {error}",
                    path=path,
                    hint="move the file aside (it only saves recomputation), or use another --cache-path or --no-cache",
                ) from None

    @staticmethod
    def _set_up(db: sqlite3.Connection, attempts: int = 100) -> None:
        """WAL mode and the table. Switching the journal mode ignores the busy timeout, so when several
        processes open a new cache at once (ranks under torchrun) the losers wait and try again."""
        for attempt in range(attempts):
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.commit()
                return
            except sqlite3.OperationalError as error:
                if attempt == attempts - 1 or "locked" not in str(error):
                    raise
                time.sleep(0.05)

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
