"""Tables the commands print: a run's metrics, a comparison's headline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Column, Table

from harness.comparison.gate import RuleOutcome
from harness.core.record import MetricValue, RunResult


def _format_metric(value: float, stderr: float | None) -> str:
    text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return f"{text} ± {stderr:.2g}" if stderr is not None else text


def sample_count(metric_value: MetricValue, n_samples: int) -> str:
    """The samples a value is over: a judge metric's valid judgments, with its errors beside them."""
    if metric_value.n is None:
        return str(n_samples)
    return f"{metric_value.n} ({metric_value.n_errors} errors)" if metric_value.n_errors else str(metric_value.n)


def results_table(run_result: RunResult, title: str) -> Table:
    """One row per task and metric, with bootstrap standard errors and the samples each value is over."""
    table = Table("task", "metric", "value", "n", "cached", title=title)
    for task_name, task_result in run_result.tasks.items():
        for key, metric_value in task_result.metrics.items():
            table.add_row(
                task_name,
                key,
                _format_metric(metric_value.value, metric_value.stderr),
                sample_count(metric_value, task_result.n_samples),
                str(task_result.n_cached),
            )
    for group_name, group in run_result.groups.items():
        for key, metric_value in group.metrics.items():
            label = f"{group_name} ({group.aggregate}, {len(group.tasks)} tasks)"
            table.add_row(label, key, _format_metric(metric_value.value, metric_value.stderr), str(group.n_samples), "")
    return table


def headline_table(comparison: Any) -> Table:
    from reports.markdown import format_number, format_p_value, significance_marker

    table = Table("baseline", "candidate", "delta", "95% CI", "p", "")
    # Task and metric names wrap rather than being cut to "notice…" in a narrow terminal.
    table.columns.insert(0, Column("metric", overflow="fold"))
    table.columns.insert(0, Column("task", overflow="fold"))
    for run_comparison in comparison.comparisons:
        for task in run_comparison.tasks.values():
            for m in task.metrics:
                table.add_row(
                    task.task,
                    m.metric,
                    format_number(m.baseline),
                    format_number(m.candidate),
                    f"{m.delta:+.4g}",
                    f"[{format_number(m.ci_low)}, {format_number(m.ci_high)}]",
                    format_p_value(m.p_value),
                    significance_marker(m),
                )
    return table


def gate_table(outcomes: Sequence[RuleOutcome]) -> Table:
    """One row per gate rule: pass or FAIL, the values, and every check with its threshold and margin."""
    table = Table("rule", "result", "detail", title="gate")
    for outcome in outcomes:
        result = "pass" if outcome.passed else "[red]FAIL[/]"
        table.add_row(f"{outcome.rule.task}/{outcome.rule.metric}", result, outcome.detail)
    return table
