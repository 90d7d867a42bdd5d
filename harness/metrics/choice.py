"""Built-in metrics of log-likelihood tasks, as lm-evaluation-harness computes them.

multiple_choice: each choice's continuation log-likelihood given the prompt. `acc` takes the argmax of the summed
log-probabilities (the first on ties, as numpy's argmax), `acc_norm` the argmax after dividing each by the
choice's length in characters, `acc_mutual_info` the argmax of the log-probability less the choice's
log-probability with no context, and `mc2` the probability mass on the true choices (TruthfulQA MC2).
With several gold choices, `acc` counts a prediction in any of them.

loglikelihood: one continuation per sample. `acc` is 1 when greedy decoding produces it exactly, `perplexity`
exp(-mean log-likelihood per sample) (lm-evaluation-harness's loglikelihood perplexity: per sample, not per token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from harness.core.registry import ChoiceStats, metric


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


@metric("acc", kind="multiple_choice", description="1 if the most likely choice is gold")
def acc(choices: Sequence[ChoiceStats], gold: Sequence[int]) -> float:
    return float(_argmax([c.logprob for c in choices]) in gold)


@metric(
    "acc_norm",
    kind="multiple_choice",
    description="acc with each log-likelihood divided by the choice's length in characters",
)
def acc_norm(choices: Sequence[ChoiceStats], gold: Sequence[int]) -> float:
    return float(_argmax([c.logprob / max(c.length, 1) for c in choices]) in gold)


@metric(
    "acc_mutual_info",
    kind="multiple_choice",
    description="acc of log P(choice | prompt) - log P(choice): the choice the prompt makes most likelier",
    needs_unconditional=True,
)
def acc_mutual_info(choices: Sequence[ChoiceStats], gold: Sequence[int]) -> float:
    if any(c.unconditional is None for c in choices):
        raise ValueError("acc_mutual_info needs each choice's unconditional log-likelihood")
    return float(_argmax([c.logprob - (c.unconditional or 0.0) for c in choices]) in gold)


@metric("mc2", kind="multiple_choice", description="probability mass on the true choices, normalised over all choices")
def mc2(choices: Sequence[ChoiceStats], gold: Sequence[int]) -> float:
    top = max(c.logprob for c in choices)
    weights = [math.exp(c.logprob - top) for c in choices]
    return sum(weights[i] for i in gold) / sum(weights)


@metric("acc", kind="loglikelihood", description="1 if greedy decoding produces the continuation exactly")
def greedy_acc(choices: Sequence[ChoiceStats], gold: Sequence[int]) -> float:
    return float(choices[0].greedy)


def _sample_perplexity(totals: Sequence[float]) -> dict[str, float]:
    logprob_sum, count = totals
    return {"perplexity": math.exp(-logprob_sum / count) if count else math.nan}


@metric(
    "perplexity",
    kind="loglikelihood",
    higher_is_better=False,
    keys=("perplexity",),
    stat_keys=("logprob",),
    from_stats=_sample_perplexity,
    description="exp(-mean continuation log-likelihood per sample), as lm-evaluation-harness's loglikelihood tasks",
)
def continuation_perplexity(choices: Sequence[ChoiceStats], gold: Sequence[int]) -> dict[str, float]:
    return {"logprob": choices[0].logprob}
