"""Corpus values: a metric's value and bootstrap spread from per-sample statistics, and groups of tasks (micro:
pooled samples; macro: the mean of the tasks' values). `options` is the runner's RunOptions (seed, resamples)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from harness.core.record import GroupResult, MetricValue, TaskResult
from harness.core.taskspec import GroupSpec, TaskSpec
from harness.metrics.stats import bootstrap
from harness.metrics.tasks import TaskMetric, task_metrics


def metric_values(
    scorer: TaskMetric,
    rows: list[list[float]],
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    options: Any,
) -> dict[str, MetricValue]:
    """A metric's corpus values from per-sample sufficient statistics, with bootstrap spreads."""
    metric_def, metric_options = scorer.definition, scorer.options
    values = metric_def.corpus_value(metric_options, [sum(column) for column in zip(*rows, strict=True)])
    metrics: dict[str, MetricValue] = {}
    spreads = bootstrap(
        rows,
        functools.partial(metric_def.corpus_value, metric_options),
        n_resamples=options.bootstrap_resamples,
        seed=options.seed,
    )
    signature = metric_def.signature(predictions, references, **metric_options) if metric_def.signature else None
    for key, value in values.items():
        informational = key in metric_def.info_keys
        spread = None if informational else spreads.get(key)
        metrics[key] = MetricValue(
            value=value,
            metric=metric_def.name,
            signature=signature,
            higher_is_better=None if informational else metric_def.higher_is_better,
            stderr=spread.stderr if spread else None,
            ci_low=spread.ci_low if spread else None,
            ci_high=spread.ci_high if spread else None,
        )
    return metrics


def group_results(
    groups: Sequence[GroupSpec], specs: dict[str, TaskSpec], results: dict[str, TaskResult], options: Any
) -> dict[str, GroupResult]:
    """Each group's values: micro pools its tasks' per-sample statistics (tasks of one kind and metric config),
    macro averages its tasks' values (standard error sqrt(sum se^2) / k)."""
    by_name = {group.group: group for group in groups}

    def leaves(name: str) -> list[str]:
        return [t for m in by_name[name].tasks for t in (leaves(m) if m in by_name else [m])]

    grouped = {}
    for group in groups:
        names = list(dict.fromkeys(leaves(group.group)))
        metrics: dict[str, MetricValue] = {}
        if group.aggregate == "micro":
            first = specs[names[0]]
            for scorer in task_metrics(first.kind, first.metrics, first.filters):
                samples = [s for name in names for s in results[name].samples if s.error is None]
                needed = scorer.definition.stat_keys or scorer.definition.keys
                if not samples or not all(key in samples[0].scores for key in needed):
                    continue
                predictions, references = [s.output or "" for s in samples], [s.references for s in samples]
                scores = [s.scores for s in samples]
                try:
                    rows = scorer.definition.sufficient_stats(scorer.options, scores, predictions, references)
                except KeyError:  # a member task scores other metrics
                    continue
                metrics.update(metric_values(scorer, rows, predictions, references, options))
        else:
            shared = set.intersection(*(set(results[name].metrics) for name in names))
            for key in sorted(shared):
                values = [results[name].metrics[key] for name in names]
                known = [v.stderr for v in values if v.stderr is not None]
                stderr = math.sqrt(sum(e * e for e in known)) / len(values) if len(known) == len(values) else None
                metrics[key] = values[0].model_copy(
                    update={
                        "value": sum(v.value for v in values) / len(values),
                        "stderr": stderr,
                        "ci_low": None,
                        "ci_high": None,
                    }
                )
        grouped[group.group] = GroupResult(
            members=group.tasks,
            tasks=names,
            aggregate=group.aggregate,
            n_samples=sum(results[name].n_samples for name in names),
            metrics=metrics,
        )
    return grouped
