"""Shared fixtures: one real embedded Gemma per session, an isolated result cache per test."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cache import ResultCache
from harness.models import LoadedModel, ModelOptions, load_model

REPO_ROOT = Path(__file__).resolve().parents[1]

# inductor's on-disk cache keys a compiled graph by the graph, not by a custom operator's fake function: a cache
# left by an earlier version of adapters.lora_addmm served stale output strides. Each session compiles afresh.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-tests-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)


@pytest.fixture(scope="session")
def gemma() -> LoadedModel:
    """The real embedded Gemma 3 270M (fp32, CPU), loaded once. Tests must not load adapters into it."""
    return load_model(ModelOptions())


@pytest.fixture
def result_cache(tmp_path: Path) -> Iterator[ResultCache]:
    cache = ResultCache(tmp_path / "cache.sqlite")
    yield cache
    cache.close()


@pytest.fixture
def task_dir(tmp_path: Path) -> Callable[..., Path]:
    """Returns `make(name, rows, **yaml_fields)`: writes data JSONL + task YAML into a fresh tasks folder."""
    folder = tmp_path / "tasks"
    folder.mkdir()

    def make(name: str, rows: list[dict[str, Any]], **fields: Any) -> Path:
        data_path = folder / f"{name}.jsonl"
        data_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        spec = {"name": name, "data": data_path.name, **fields}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
        return folder

    return make
