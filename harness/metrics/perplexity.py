"""The built-in perplexity metric: per-sample log-likelihood statistics, aggregated weighted by tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence

from harness.core.registry import SampleStats, metric


def perplexity_from_stats(totals: Sequence[float]) -> dict[str, float]:
    """Token-weighted: exp(total NLL / total tokens), and bits per UTF-8 byte of the scored text."""
    nll_sum, token_count, byte_count, _samples = totals
    return {
        "perplexity": math.exp(nll_sum / token_count) if token_count else math.nan,
        "bits_per_byte": nll_sum / (math.log(2) * byte_count) if byte_count else math.nan,
        "nll_sum": nll_sum,
        "token_count": token_count,
    }


@metric(
    "perplexity",
    kind="perplexity",
    higher_is_better=False,
    keys=("perplexity", "bits_per_byte"),
    info_keys=("nll_sum", "token_count"),
    stat_keys=("nll", "tokens", "bytes"),
    from_stats=perplexity_from_stats,
    description="token-weighted perplexity and bits per byte, rolling windows past the context",
)
def perplexity(stats: SampleStats) -> dict[str, float]:
    return {"nll": stats.nll, "tokens": float(stats.tokens), "bytes": float(stats.bytes)}
