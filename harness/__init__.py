"""Evaluation-first benchmarking harness for base and fine-tuned language models.

What a task folder's Python module needs: `@task` functions returning a `TaskSpec`, `@metric` functions. The
Python API (`harness.train`, `harness.evaluate`, `harness.compare`, `harness.gate`; harness/api.py) loads on first
use, so that importing `harness` for a task or metric stays light.
"""

from typing import Any

from harness.core.errors import HarnessError
from harness.core.registry import MetricDef, SampleStats, metric, task
from harness.core.taskspec import TaskSpec

__all__ = ["HarnessError", "MetricDef", "SampleStats", "TaskSpec", "metric", "task"]
_API = ("compare", "evaluate", "evaluate_each", "gate", "train")


def __getattr__(name: str) -> Any:
    if name in _API:
        from harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
