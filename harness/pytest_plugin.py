"""The pytest plugin (registered as an entry point, so installing the harness enables it): gate inside a user's own
test suite.

    def test_no_regression(harness_gate):
        tuned = harness.evaluate(tasks=["factual_qa"], adapter="adapters/mine")
        harness_gate(tuned, baseline="baselines/main.json", rules="gate.yaml")

`assert_no_regression(candidate, baseline, rules)` compares the two runs (RunResults or results.json paths) and
fails with every rule's outcome, failures first, as a table in the assertion message. The fixture `harness_gate`
is the same function. Importing this module loads nothing heavy: the harness loads on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.comparison.gate import GateRules, RuleOutcome
    from harness.core.record import RunResult


def outcome_table(outcomes: list[RuleOutcome]) -> str:
    """One line per rule, failures first: pass/FAIL, task, metric, then its values and checks."""
    rows = sorted(outcomes, key=lambda outcome: outcome.passed)
    cells = [("FAIL" if not o.passed else "pass", o.rule.task, o.rule.metric, o.detail) for o in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(3)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3]]) for row in cells
    )


def assert_no_regression(
    candidate: RunResult | Path | str,
    baseline: RunResult | Path | str,
    rules: GateRules | Path | str,
    seed: int = 0,
) -> list[RuleOutcome]:
    """Fail (AssertionError) when any gate rule fails for candidate against baseline; else the outcomes."""
    from harness import api

    def run(value: RunResult | Path | str) -> Any:
        return Path(value) if isinstance(value, str) else value

    outcomes = api.gate(api.compare(run(baseline), run(candidate), seed), rules)
    failed = [outcome for outcome in outcomes if not outcome.passed]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(outcomes)} gate rule(s) failed:\n{outcome_table(outcomes)}")
    return outcomes


@pytest.fixture
def harness_gate() -> Any:
    """`assert_no_regression`: call it with candidate, baseline and rules."""
    return assert_no_regression


__all__ = ["assert_no_regression", "harness_gate", "outcome_table"]
