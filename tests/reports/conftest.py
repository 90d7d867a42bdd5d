"""Real runs of the embedded Gemma for comparison tests: greedy, sampled and a planted regression (outputs cut
to two tokens), on small slices of the built-in tasks. Built once per module."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.backends.hf import LoadedModel
from harness.backends.hf_backend import HFBackend
from harness.core.cache import ResultCache
from harness.core.record import RunResult
from harness.evaluation.catalog import builtin_task_dir, get_tasks
from harness.evaluation.runner import RunOptions, evaluate, prepare_tasks

LIMIT = 8


def _variant(folder: Path, generation: dict[str, object]) -> Path:
    folder.mkdir(parents=True)
    for name in ("factual_qa", "plain_english"):
        spec = yaml.safe_load((builtin_task_dir() / f"{name}.yaml").read_text())
        spec["data"] = str(builtin_task_dir() / spec["data"])
        spec["generation"] = {**spec["generation"], **generation}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return folder


@pytest.fixture(scope="session")
def real_runs(gemma: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """results.json paths of three real runs: 'greedy', 'sampled', 'regressed'."""
    root = tmp_path_factory.mktemp("runs")
    variants = {
        "greedy": {},
        "sampled": {"temperature": 0.8, "top_k": 40, "seed": 5},
        "regressed": {"max_new_tokens": 2},
    }
    paths = {}
    for name, generation in variants.items():
        folder = _variant(root / f"tasks-{name}", generation)
        specs = get_tasks(["factual_qa", "plain_english"], [folder])
        options = RunOptions(limit=LIMIT, bootstrap_resamples=200)
        result: RunResult = evaluate(
            HFBackend(gemma), prepare_tasks(specs, LIMIT), ResultCache(root / "cache.sqlite"), options
        )
        paths[name] = result.write(root / name / "results.json")
    return paths
