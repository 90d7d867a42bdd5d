"""Bootstrap standard errors: seeded, and close to the analytic standard error of a mean."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from harness.metrics.stats import bootstrap


def mean(totals: Sequence[float]) -> dict[str, float]:
    return {"mean": totals[0] / totals[1]}


def test_bootstrap_stderr_of_a_mean_matches_the_analytic_value() -> None:
    values = np.random.default_rng(3).normal(size=400)
    rows = [[value, 1.0] for value in values]
    spread = bootstrap(rows, mean, n_resamples=2000, seed=0)["mean"]
    analytic = values.std(ddof=1) / math.sqrt(len(values))
    assert spread.stderr == pytest.approx(analytic, rel=0.1)
    assert spread.ci_low < values.mean() < spread.ci_high
    assert bootstrap(rows, mean, n_resamples=2000, seed=0)["mean"] == spread  # seeded
    assert bootstrap(rows, mean, n_resamples=2000, seed=1)["mean"] != spread


def test_bootstrap_of_a_ratio_of_sums_resamples_items_not_rows_of_text() -> None:
    rows = [[10.0, 5.0], [90.0, 45.0], [30.0, 10.0]]  # e.g. (NLL, tokens) per text
    spreads = bootstrap(rows, lambda t: {"ratio": t[0] / t[1]}, n_resamples=500, seed=0)
    assert 2.0 <= spreads["ratio"].ci_low <= spreads["ratio"].ci_high <= 3.0


def test_bootstrap_needs_two_items() -> None:
    assert bootstrap([[1.0, 1.0]], mean) == {}
