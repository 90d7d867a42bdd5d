"""Where the harness keeps its caches: `$HARNESS_CACHE_DIR`, else `$XDG_CACHE_HOME/harness`, else ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("HARNESS_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "harness"
    path.mkdir(parents=True, exist_ok=True)
    return path
