"""A task's metrics as scored: each configured metric with its options, once per answer filter where the task
has filters (GSM8K's strict and flexible answer extraction), the filtered variants' keys suffixed `_<filter>`."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from harness.core.registry import MetricDef, lookup_metric
from harness.core.taskspec import FilterConfig, MetricConfig


@dataclasses.dataclass(frozen=True)
class TaskMetric:
    definition: MetricDef
    options: dict[str, Any]


def apply_filter(text: str, config: FilterConfig) -> str:
    """The answer `config` reads out of `text` (as lm-evaluation-harness's regex filter): the selected match, its
    first non-empty group where the pattern has several, stripped; the fallback when nothing matches."""
    matches = re.findall(config.regex, text)
    if not matches:
        return config.fallback
    try:
        match = matches[config.group_select]
    except IndexError:
        return config.fallback
    if isinstance(match, tuple):
        match = next((group for group in match if group), config.fallback)
    return str(match).strip()


def _filtered(metric_def: MetricDef, config: FilterConfig) -> MetricDef:
    """`metric_def` scoring the filtered prediction, its keys suffixed with the filter's name."""
    suffix = f"_{config.name}"
    fn, from_stats, corpus_stats = metric_def.fn, metric_def.from_stats, metric_def.corpus_stats

    def renamed(values: dict[str, float]) -> dict[str, float]:
        return {key + suffix: value for key, value in values.items()}

    def score(prediction: str, references: Sequence[str], **options: Any) -> dict[str, float]:
        value = fn(apply_filter(prediction, config), references, **options)
        return renamed(value) if isinstance(value, dict) else {metric_def.name + suffix: float(value)}

    def filtered_stats(predictions: Sequence[str], references: Any, **options: Any) -> list[list[float]]:
        assert corpus_stats is not None
        return corpus_stats([apply_filter(p, config) for p in predictions], references, **options)

    return dataclasses.replace(
        metric_def,
        name=metric_def.name + suffix,
        fn=score,
        keys=tuple(key + suffix for key in metric_def.keys),
        info_keys=tuple(key + suffix for key in metric_def.info_keys),
        stat_keys=tuple(key + suffix for key in metric_def.stat_keys),
        corpus_stats=filtered_stats if corpus_stats is not None else None,
        from_stats=(lambda totals, **options: renamed(from_stats(totals, **options))) if from_stats else None,
    )


def task_metrics(
    kind: str, metrics: Sequence[MetricConfig | dict[str, Any]], filters: Sequence[FilterConfig | dict[str, Any]] = ()
) -> list[TaskMetric]:
    """The task's metrics, from its spec or from a run record's copy of it."""
    configs = [m if isinstance(m, MetricConfig) else MetricConfig.model_validate(m) for m in metrics]
    filter_configs = [f if isinstance(f, FilterConfig) else FilterConfig.model_validate(f) for f in filters]
    resolved = [(lookup_metric(c.name, kind), c.options) for c in configs]  # type: ignore[arg-type]
    if not filter_configs:
        return [TaskMetric(metric_def, options) for metric_def, options in resolved]
    return [TaskMetric(_filtered(d, f), options) for f in filter_configs for d, options in resolved]
