"""The CI regression gate: rules per task and metric, checked against a comparison of baseline and candidate.

alpha: 0.05
rules:
  - {task: notices_rewrite, metric: bleu, max_drop: 2.0}                # absolute, in the worse direction
  - {task: general_english, metric: perplexity, max_drop_relative: 0.1, require_significant: true}
  - {task: notices_service, metric: exact_match, min: 0.2}              # (max: for lower-is-better metrics)
  - {task: notices_rewrite, metric: general.relevance, max_judge_error_rate: 0.25}
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from harness.comparison.compare import MetricComparison, RunComparison
from harness.core.yamlfile import load_model_file


class GateRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    metric: str
    max_drop: float | None = Field(None, ge=0)
    max_drop_relative: float | None = Field(None, ge=0)
    min: float | None = None
    max: float | None = None
    require_significant: bool = False  # a drop past the limit fails only when p < alpha
    max_judge_error_rate: float | None = Field(None, ge=0, le=1)


class GateRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.05, gt=0, lt=1)
    rules: list[GateRule] = Field(min_length=1)


class RuleOutcome(BaseModel):
    rule: GateRule
    passed: bool
    message: str


def load_rules(path: Path) -> GateRules:
    return load_model_file(path, GateRules, "gate rules")


def _worsening(metric: MetricComparison) -> float:
    """How much worse the candidate is (positive = worse), whatever the metric's direction."""
    return -metric.delta if metric.higher_is_better else metric.delta


def check_rule(rule: GateRule, comparison: RunComparison, alpha: float) -> RuleOutcome:
    task = comparison.tasks.get(rule.task)
    metric = next((m for m in task.metrics if m.metric == rule.metric), None) if task else None
    if metric is None:
        return RuleOutcome(rule=rule, passed=False, message=f"{rule.task}/{rule.metric} is not in both runs")
    failures = []
    worse = _worsening(metric)
    significant = metric.p_value is not None and metric.p_value < alpha
    limits = [
        ("max_drop", rule.max_drop, worse),
        (
            "max_drop_relative",
            rule.max_drop_relative,
            worse / abs(metric.baseline) if metric.baseline else float("inf"),
        ),
    ]
    for name, limit, amount in limits:
        if limit is not None and amount > limit and (significant or not rule.require_significant):
            failures.append(f"worse by {amount:.4g} > {name} {limit:g} (p={metric.p_value:.3g})")
    if rule.min is not None and metric.candidate < rule.min:
        failures.append(f"{metric.candidate:.4g} < min {rule.min:g}")
    if rule.max is not None and metric.candidate > rule.max:
        failures.append(f"{metric.candidate:.4g} > max {rule.max:g}")
    if rule.max_judge_error_rate is not None:  # of the candidate's samples (metric.n counts those both runs scored)
        rate = (metric.candidate_errors or 0) / task.n_shared if task and task.n_shared else 1.0
        if rate > rule.max_judge_error_rate:
            failures.append(f"judge error rate {rate:.2f} > {rule.max_judge_error_rate:g}")
    summary = f"{metric.baseline:.4g} -> {metric.candidate:.4g} (delta {metric.delta:+.4g})"
    return RuleOutcome(rule=rule, passed=not failures, message="; ".join(failures) or summary)


def run_gate(rules: GateRules, comparison: RunComparison) -> list[RuleOutcome]:
    return [check_rule(rule, comparison, rules.alpha) for rule in rules.rules]
