"""Metrics: the built-in ones (registered on import), lookups in the registry, and bootstrap statistics.

A metric is a pure per-sample function plus a corpus aggregation; see harness.core.registry for `@metric`.
"""

from harness.core.registry import ChoiceStats, MetricDef, SampleStats, metric
from harness.core.registry import lookup_metric as get_metric
from harness.core.registry import registered_metrics as all_metrics
from harness.metrics import choice, generate, perplexity  # noqa: F401  (registers the built-in metrics)

__all__ = ["ChoiceStats", "MetricDef", "SampleStats", "all_metrics", "get_metric", "metric"]
