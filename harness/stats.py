"""Statistics over per-sample scores: seeded bootstrap standard errors and percentile intervals."""

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


def bootstrap(
    statistic: Callable[[Sequence[int]], dict[str, float]],
    n_items: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Spread]:
    """Resample item indices with replacement, recompute `statistic` on each resample, and report per key the
    standard deviation (the bootstrap standard error) and the percentile interval."""
    if n_items < 2:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        indices = rng.integers(0, n_items, size=n_items).tolist()
        for key, value in statistic(indices).items():
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
