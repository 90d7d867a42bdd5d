"""Gate rules that cannot pass on missing data: no valid values fail, judge error rates have a default ceiling, a
rule without a threshold or naming what the comparison lacks is a configuration error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.comparison.compare import MetricComparison, RunComparison, TaskComparison
from harness.comparison.gate import GateRule, GateRules, load_rules, run_gate
from harness.core.errors import HarnessError


def _comparison(baseline: float, candidate: float, candidate_errors: int | None = None) -> RunComparison:
    metric = MetricComparison(
        task="t", metric="general.relevance", higher_is_better=True, baseline=baseline, candidate=candidate,
        delta=candidate - baseline, test="paired permutation", n=0 if math.isnan(candidate) else 12,
        p_value=None if math.isnan(candidate) else 0.5, baseline_errors=0, candidate_errors=candidate_errors,
    )  # fmt: skip
    task = TaskComparison(task="t", n_shared=12, metrics=[metric])
    return RunComparison(baseline="a", candidate="b", baseline_label="a", candidate_label="b", tasks={"t": task})


@pytest.mark.parametrize(
    "threshold", [{"min": 1.0}, {"max_drop": 0.5}, {"max_drop_relative": 0.1}, {"max_judge_error_rate": 1.0}]
)
def test_a_candidate_without_valid_values_fails_every_rule(threshold: dict[str, float]) -> None:
    """All twelve judgments unparseable: nan -> nan passed min, max_drop and max_drop_relative before."""
    rules = GateRules(rules=[GateRule(task="t", metric="general.relevance", **threshold)])
    (outcome,) = run_gate(rules, _comparison(4.0, math.nan, candidate_errors=12))
    assert not outcome.passed
    assert outcome.message == "the candidate has no valid values (12 judge errors)"


def test_a_drop_from_a_baseline_without_valid_values_fails() -> None:
    rules = GateRules(rules=[GateRule(task="t", metric="general.relevance", max_drop=0.5)])
    (outcome,) = run_gate(rules, _comparison(math.nan, 4.0, candidate_errors=0))
    assert not outcome.passed and "baseline has no valid values" in outcome.message


@pytest.mark.parametrize(("errors", "passed"), [(6, True), (7, False)])
def test_judge_errors_have_a_default_ceiling(errors: int, passed: bool) -> None:
    """A rule on a judge metric fails past half the samples unjudged even when it sets no error rate itself."""
    rules = GateRules(rules=[GateRule(task="t", metric="general.relevance", min=1.0)])
    (outcome,) = run_gate(rules, _comparison(4.0, 4.0, candidate_errors=errors))
    assert outcome.passed is passed


def test_a_rule_without_a_threshold_names_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text("rules:\n  - {task: t, metric: bleu, min: 1}\n  - {task: t, metric: chrf}\n")
    with pytest.raises(HarnessError) as raised:
        load_rules(path)
    assert f"{path}:3: field 'rules.1.metric'" in str(raised.value)
    assert "a rule needs a threshold" in str(raised.value)


@pytest.mark.parametrize(
    ("task", "metric", "hint"), [("nope", "bleu", "tasks in both runs: t"), ("t", "bleu", "its metrics")]
)
def test_a_rule_naming_what_the_runs_lack_is_a_configuration_error(
    task: str, metric: str, hint: str, tmp_path: Path
) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text(f"rules:\n  - {{task: {task}, metric: {metric}, min: 1}}\n")
    with pytest.raises(HarnessError) as raised:
        run_gate(load_rules(path), _comparison(4.0, 4.0))
    assert str(path) in str(raised.value) and hint in str(raised.value)


@pytest.mark.parametrize(("candidate", "passed"), [(0.0, True), (0.5, True), (-0.5, False)])
def test_a_relative_drop_from_zero_fails_only_when_worse(candidate: float, passed: bool) -> None:
    """From a baseline of 0 any worsening is infinite; no change, or an improvement, passes (both failed before)."""
    rules = GateRules(rules=[GateRule(task="t", metric="general.relevance", max_drop_relative=1.5)])
    (outcome,) = run_gate(rules, _comparison(0.0, candidate))
    assert outcome.passed is passed


def test_every_check_says_its_threshold_value_and_margin() -> None:
    """A passing rule said only "44.08 -> 98.2": now each check names its threshold, the value compared with it and
    the margin, failures first, and `detail` puts the observed values in front."""
    rules = GateRules(rules=[GateRule(task="t", metric="general.relevance", min=3.0, max_drop=0.5)])
    (passing,) = run_gate(rules, _comparison(4.0, 3.8, candidate_errors=0))
    assert passing.passed
    assert passing.message == (
        "worse by 0.2, within max_drop 0.5 (margin 0.3); 3.8 >= min 3 (margin 0.8); judge error rate 0.00 <= 0.5"
    )
    assert passing.detail.startswith("4 -> 3.8 (delta -0.2): worse by 0.2")
    (failing,) = run_gate(rules, _comparison(4.0, 2.9, candidate_errors=0))
    assert not failing.passed
    assert failing.message.startswith("worse by 1.1 > max_drop 0.5 (p=0.5); 2.9 < min 3; judge error rate")


@pytest.mark.parametrize(("candidate", "text"), [(2.9, "2.9 <= max 3 (margin 0.1)"), (3.8, "3.8 > max 3")])
def test_a_max_bound_reads_the_same_way(candidate: float, text: str) -> None:
    rules = GateRules(rules=[GateRule(task="t", metric="general.relevance", max=3.0)])
    (outcome,) = run_gate(rules, _comparison(4.0, candidate))
    assert outcome.message == text and outcome.passed is (candidate <= 3.0)


@pytest.mark.parametrize(("failed", "allowed", "passed"), [(0, 0.0, True), (1, 0.0, False), (1, 0.1, True)])
def test_samples_without_output_fail_the_rule_unless_allowed(failed: int, allowed: float, passed: bool) -> None:
    """An endpoint that failed on some of the candidate's samples: the metric covers only the answered ones, so a
    rule fails on any failure unless `max_failed_rate` allows that share (1 of 13 here)."""
    comparison = _comparison(4.0, 4.0, candidate_errors=0)
    comparison.tasks["t"].candidate_failed = failed
    rules = GateRules(rules=[GateRule(task="t", metric="general.relevance", min=1.0, max_failed_rate=allowed)])
    (outcome,) = run_gate(rules, comparison)
    assert outcome.passed is passed
    assert ("without output" in outcome.message) is bool(failed)
