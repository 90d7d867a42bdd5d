"""Statistics over per-sample sufficient statistics: seeded bootstrap standard errors and percentile intervals.

Every metric's corpus value is a function of column sums of per-sample statistic rows, so a bootstrap
resample is a vector of per-sample counts: totals = counts @ rows. No text is re-scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    stderr: float
    ci_low: float
    ci_high: float


def resample_counts(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_items] counts: how often each item appears in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_resamples)


def bootstrap(
    rows: Sequence[Sequence[float]],
    statistic: Callable[[Sequence[float]], dict[str, float]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Spread]:
    """Per key of `statistic(column totals)`: the bootstrap standard error and percentile interval."""
    matrix = np.asarray(rows, dtype=np.float64)
    if len(matrix) < 2:
        return {}
    totals = resample_counts(len(matrix), n_resamples, seed) @ matrix
    draws: dict[str, list[float]] = {}
    for row_totals in totals:
        for key, value in statistic(row_totals.tolist()).items():
            draws.setdefault(key, []).append(value)
    tail = (1 - confidence) / 2 * 100
    spreads = {}
    for key, values in draws.items():
        finite = np.array([v for v in values if math.isfinite(v)])
        if len(finite) < 2:
            continue
        low, high = np.percentile(finite, [tail, 100 - tail])
        spreads[key] = Spread(float(finite.std(ddof=1)), float(low), float(high))
    return spreads
