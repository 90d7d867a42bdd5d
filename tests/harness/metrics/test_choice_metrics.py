"""Multiple-choice and loglikelihood metrics against lm-evaluation-harness 0.4.13's formulas (api/task.py
process_results; truthfulqa/utils.py process_results_mc2), on pinned cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.core.registry import ChoiceStats
from harness.metrics import get_metric


def _choices(logprobs: list[float], texts: list[str], unconditional: list[float] | None = None) -> list[ChoiceStats]:
    free = unconditional or [None] * len(logprobs)  # type: ignore[list-item]
    return [ChoiceStats(lp, 1, len(t), False, u) for lp, t, u in zip(logprobs, texts, free, strict=True)]


def _score(name: str, choices: list[ChoiceStats], gold: list[int]) -> float:
    return get_metric(name, "multiple_choice").score({}, choices=choices, gold=gold)[name]


def test_acc_and_acc_norm_follow_lm_evaluation_harness() -> None:
    texts, lls = ["a", "much longer answer", "mid size"], [-3.0, -9.0, -5.0]
    pred, pred_norm = np.argmax(lls), np.argmax(np.array(lls) / np.array([float(len(t)) for t in texts]))
    assert (pred, pred_norm) == (0, 1)  # length normalisation changes the pick here
    choices = _choices(lls, texts)
    assert _score("acc", choices, [0]) == 1.0 and _score("acc_norm", choices, [0]) == 0.0
    assert _score("acc_norm", choices, [1]) == 1.0
    assert _score("acc", _choices([-1.0, -1.0], ["x", "y"]), [0]) == 1.0  # ties: the first, as numpy's argmax
    assert _score("acc", choices, [2, 0]) == 1.0  # several gold choices: any of them


def test_mutual_information_subtracts_the_context_free_likelihood() -> None:
    choices = _choices([-2.0, -3.0], ["x", "y"], unconditional=[-1.0, -4.0])
    assert _score("acc_mutual_info", choices, [1]) == 1.0 and _score("acc", choices, [0]) == 1.0


def test_mc2_is_the_normalised_mass_on_true_answers() -> None:
    lls, labels = [-5.0, -5.5, -6.0, -6.5, -7.0, -7.5], [1, 1, 1, 0, 0, 0]
    probs = np.exp(lls) / np.sum(np.exp(lls))
    reference = float(np.sum(probs[np.array(labels) == 1]))
    ours = _score("mc2", _choices(lls, ["t"] * 6), [0, 1, 2])
    assert ours == pytest.approx(reference, rel=1e-12) and ours == pytest.approx(0.8176, abs=1e-4)
    # lm-eval's exp() underflows to 0/0 for very unlikely answers; the stable form does not
    assert _score("mc2", _choices([-800.0, -801.0], ["t", "f"]), [0]) == pytest.approx(1 / (1 + math.exp(-1)))


def test_loglikelihood_acc_is_greedy_and_perplexity_is_per_sample() -> None:
    acc, perplexity = get_metric("acc", "loglikelihood"), get_metric("perplexity", "loglikelihood")
    samples = [[ChoiceStats(-2.0, 4, 5, True)], [ChoiceStats(-4.0, 1, 5, False)]]
    assert [acc.score({}, choices=s, gold=[0])["acc"] for s in samples] == [1.0, 0.0]
    scores = [perplexity.score({}, choices=s, gold=[0]) for s in samples]
    rows = perplexity.sufficient_stats({}, scores, [], [])
    totals = [sum(column) for column in zip(*rows, strict=True)]
    assert perplexity.corpus_value({}, totals)["perplexity"] == pytest.approx(math.exp(3.0))  # exp(-mean ll)
