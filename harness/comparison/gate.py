"""The CI regression gate: rules per task and metric, checked against a comparison of baseline and candidate.

alpha: 0.05
rules:
  - {task: notices_rewrite, metric: bleu, max_drop: 2.0}                # absolute, in the worse direction
  - {task: general_english, metric: perplexity, max_drop_relative: 0.1, require_significant: true}
  - {task: notices_service, metric: exact_match, min: 0.2}              # (max: for lower-is-better metrics)
  - {task: notices_rewrite, metric: general.relevance, max_judge_error_rate: 0.25}

A rule needs at least one threshold. A metric with no valid values fails its rule (a judge that answered nothing
is no pass), and so does a judge metric whose candidate error rate exceeds `max_judge_error_rate`, by default
DEFAULT_MAX_JUDGE_ERROR_RATE. A candidate sample the model gave no output for (an endpoint's request error) fails
every rule of its task unless `max_failed_rate` allows that share. A rule naming a task or metric the comparison
does not hold is a configuration error (HarnessError, listing the names there are), not a regression.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.comparison.compare import MetricComparison, RunComparison, TaskComparison
from harness.core.errors import HarnessError
from harness.core.yamlfile import FieldError, load_model_file

DEFAULT_MAX_JUDGE_ERROR_RATE = 0.5
THRESHOLDS = ("max_drop", "max_drop_relative", "min", "max", "max_judge_error_rate")


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
    max_failed_rate: float = Field(0.0, ge=0, le=1)  # the candidate's samples the model gave no output for

    @model_validator(mode="after")
    def _has_a_threshold(self) -> GateRule:
        if all(getattr(self, name) is None for name in THRESHOLDS):
            raise FieldError("metric", f"a rule needs a threshold: one of {', '.join(THRESHOLDS)}")
        return self


class GateRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.05, gt=0, lt=1)
    rules: list[GateRule] = Field(min_length=1)
    source: Path | None = Field(default=None, exclude=True)


class RuleOutcome(BaseModel):
    rule: GateRule
    passed: bool
    message: str  # every check of the rule: its threshold, the value compared with it, the margin
    observed: str = ""  # baseline -> candidate (delta)

    @property
    def detail(self) -> str:
        """What the reports print: the values, then each check."""
        return f"{self.observed}: {self.message}" if self.observed else self.message


def load_rules(path: Path) -> GateRules:
    """Gate rules from YAML; errors name the file, line and field."""
    return load_model_file(path, GateRules, "gate rules").model_copy(update={"source": path})


def _worsening(metric: MetricComparison) -> float:
    """How much worse the candidate is (positive = worse), whatever the metric's direction."""
    return -metric.delta if metric.higher_is_better else metric.delta


Check = tuple[bool, str]  # (passed, the threshold, the value compared with it and the margin, in words)


def _p_text(metric: MetricComparison) -> str:
    return "n/a" if metric.p_value is None else f"{metric.p_value:.3g}"


def _drop_checks(rule: GateRule, metric: MetricComparison, alpha: float) -> list[Check]:
    if rule.max_drop is None and rule.max_drop_relative is None:
        return []
    if math.isnan(metric.baseline):
        return [(False, "the baseline has no valid values to measure a drop from")]
    worse = _worsening(metric)
    significant = metric.p_value is not None and metric.p_value < alpha
    # From a baseline of 0 any worsening is infinitely large, and no worsening none at all.
    relative = worse / abs(metric.baseline) if metric.baseline else (math.inf if worse > 0 else 0.0)
    checks: list[Check] = []
    for name, limit, amount in (
        ("max_drop", rule.max_drop, worse),
        ("max_drop_relative", rule.max_drop_relative, relative),
    ):
        if limit is None:
            continue
        if amount <= limit:
            change = f"worse by {amount:.4g}" if amount > 0 else f"better by {-amount:.4g}" if amount else "unchanged"
            checks.append((True, f"{change}, within {name} {limit:g} (margin {limit - amount:.4g})"))
        elif significant or not rule.require_significant:
            checks.append((False, f"worse by {amount:.4g} > {name} {limit:g} (p={_p_text(metric)})"))
        else:
            checks.append((True, f"worse by {amount:.4g} > {name} {limit:g}, not significant (p={_p_text(metric)})"))
    return checks


def _bound_checks(rule: GateRule, metric: MetricComparison) -> list[Check]:
    """`min` and `max` on the candidate's value; the margin is how far inside the bound it lies."""
    checks: list[Check] = []
    for name, bound, inside, outside, sign in (("min", rule.min, ">=", "<", 1), ("max", rule.max, "<=", ">", -1)):
        if bound is None:
            continue
        margin = sign * (metric.candidate - bound)
        text = f"{metric.candidate:.4g} {inside if margin >= 0 else outside} {name} {bound:g}"
        checks.append((margin >= 0, text + (f" (margin {margin:.4g})" if margin >= 0 else "")))
    return checks


def _judge_error_checks(rule: GateRule, metric: MetricComparison, n_samples: int) -> list[Check]:
    """The judge's errors over the candidate's samples (metric.n counts only those both runs scored)."""
    if metric.candidate_errors is None:
        return []
    limit = DEFAULT_MAX_JUDGE_ERROR_RATE if rule.max_judge_error_rate is None else rule.max_judge_error_rate
    rate = metric.candidate_errors / n_samples if n_samples else 1.0
    return [(rate <= limit, f"judge error rate {rate:.2f} {'<=' if rate <= limit else '>'} {limit:g}")]


def _failed_checks(rule: GateRule, task: TaskComparison) -> list[Check]:
    """The candidate's samples without an output (an endpoint's request errors): none allowed unless the rule
    says how many may fail; the metrics cover only the samples both runs answered."""
    total = task.n_shared + task.candidate_failed
    if not task.candidate_failed:
        return []
    rate = task.candidate_failed / total if total else 1.0
    passed = rate <= rule.max_failed_rate
    text = f"{task.candidate_failed} sample(s) without output, rate {rate:.2f} {'<=' if passed else '>'} "
    return [(passed, text + f"max_failed_rate {rule.max_failed_rate:g}")]


def check_rule(rule: GateRule, comparison: RunComparison, alpha: float) -> RuleOutcome:
    """One rule against the comparison's metric (which `run_gate` has checked exists): every check it makes, with
    its threshold, the value compared and the margin, passed or not."""
    task = comparison.tasks[rule.task]
    metric = next(m for m in task.metrics if m.metric == rule.metric)
    observed = f"{metric.baseline:.4g} -> {metric.candidate:.4g} (delta {metric.delta:+.4g})"
    if math.isnan(metric.candidate):
        errors = f" ({metric.candidate_errors} judge errors)" if metric.candidate_errors else ""
        return RuleOutcome(rule=rule, passed=False, message=f"the candidate has no valid values{errors}")
    checks = [
        *_drop_checks(rule, metric, alpha),
        *_bound_checks(rule, metric),
        *_judge_error_checks(rule, metric, task.n_shared),
        *_failed_checks(rule, task),
    ]
    failed = [text for passed, text in checks if not passed]
    message = "; ".join(failed + [text for passed, text in checks if passed])  # failures first
    return RuleOutcome(rule=rule, passed=not failed, message=message, observed=observed)


def _check_names(rules: GateRules, comparison: RunComparison) -> None:
    """Every rule names a task both runs hold and one of its metrics; else a configuration error."""
    for index, rule in enumerate(rules.rules):
        task = comparison.tasks.get(rule.task)
        if task is None:
            raise HarnessError(
                f"gate rule {index + 1}: task '{rule.task}' is not in both runs",
                path=rules.source,
                field=f"rules.{index}.task",
                hint=f"tasks in both runs: {', '.join(sorted(comparison.tasks)) or 'none'}",
            )
        names = [m.metric for m in task.metrics]
        if rule.metric not in names:
            raise HarnessError(
                f"gate rule {index + 1}: task '{rule.task}' has no metric '{rule.metric}'",
                path=rules.source,
                field=f"rules.{index}.metric",
                hint=f"its metrics: {', '.join(names)}",
            )


def run_gate(rules: GateRules, comparison: RunComparison) -> list[RuleOutcome]:
    """Every rule's outcome; a rule naming what the comparison does not hold raises HarnessError first."""
    _check_names(rules, comparison)
    return [check_rule(rule, comparison, rules.alpha) for rule in rules.rules]
