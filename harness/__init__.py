"""Evaluation-first benchmarking harness for base and fine-tuned language models.

What a task folder's Python module needs: `@task` functions returning a `TaskSpec`, `@metric` functions.
"""

from harness.core.errors import HarnessError
from harness.core.registry import MetricDef, SampleStats, metric, task
from harness.core.taskspec import TaskSpec

__all__ = ["HarnessError", "MetricDef", "SampleStats", "TaskSpec", "metric", "task"]
