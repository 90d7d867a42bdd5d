"""Content fingerprints: sha256 of files and of canonical JSON. File hashes are memoised by size and mtime."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.core.paths import cache_dir


def hash_json(value: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace); the value must be JSON-serialisable."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _hash_file_uncached(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def hash_file(path: Path) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime) so large weight files are read once."""
    stat = path.stat()
    memo_path = cache_dir() / "file-hashes.json"
    memo_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo: dict[str, str] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo_key in memo:
        return memo[memo_key]
    digest = _hash_file_uncached(path)
    memo[memo_key] = digest
    tmp_path = memo_path.with_suffix(f".{os.getpid()}.tmp")
    tmp_path.write_text(json.dumps(memo))
    os.replace(tmp_path, memo_path)
    return digest


def hash_files(paths: Iterable[Path], root: Path) -> str:
    """One fingerprint over several files: their paths relative to `root` and their contents."""
    return hash_json({str(path.relative_to(root)): hash_file(path) for path in sorted(paths)})
