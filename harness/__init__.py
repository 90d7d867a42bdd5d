"""Evaluation-first benchmarking harness for base and fine-tuned language models."""

from harness.core.errors import HarnessError
from harness.core.registry import MetricDef, SampleStats, metric, task

__all__ = ["HarnessError", "MetricDef", "SampleStats", "metric", "task"]
