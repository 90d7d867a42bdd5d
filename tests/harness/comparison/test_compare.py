"""The paired permutation test: exact over every swap pattern for a few pairs, otherwise 10,000 random draws
whose Monte Carlo error is reported beside the p-value."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from harness.comparison.compare import N_PERMUTATIONS, paired_statistics


def mean(totals: Sequence[float]) -> dict[str, float]:
    return {"m": totals[0] / totals[1]}


def rows(values: list[float]) -> np.ndarray:
    return np.array([[value, 1.0] for value in values])


def test_a_few_pairs_get_the_exact_p_value() -> None:
    """Four pairs, each better by 1: of the 16 swap patterns only 'none' and 'all' reach |delta| = 1, so p = 2/16,
    whatever the seed (2,000 random draws gave about 0.125 +- 0.007, moving with the seed)."""
    for seed in (0, 1, 2):
        stats = paired_statistics(mean, rows([0, 0, 0, 0]), rows([1, 1, 1, 1]), "m", seed)
        assert stats.p_value == pytest.approx(2 / 16) and stats.p_value_error is None
        assert stats.test == "exact paired permutation"


def test_many_pairs_report_the_monte_carlo_error() -> None:
    generator = np.random.default_rng(0)
    a, b = generator.normal(size=40).tolist(), (generator.normal(size=40) + 0.3).tolist()
    stats = paired_statistics(mean, rows(a), rows(b), "m", 0)
    assert stats.test == f"paired permutation ({N_PERMUTATIONS} draws)"
    assert stats.p_value_error == pytest.approx(np.sqrt(stats.p_value * (1 - stats.p_value) / N_PERMUTATIONS))
    assert stats.p_value_error <= 0.005
    other_seed = paired_statistics(mean, rows(a), rows(b), "m", 7)
    assert abs(other_seed.p_value - stats.p_value) < 4 * np.hypot(stats.p_value_error, other_seed.p_value_error)
