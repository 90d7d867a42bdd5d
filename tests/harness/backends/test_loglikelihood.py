"""Continuation log-likelihoods (multiple-choice and loglikelihood tasks) against a plain-PyTorch reference: one
full forward per (context, continuation) and a float64 log-softmax of its logits, on the real embedded Gemma."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.backends.hf_loglikelihood import block_mask, encode_pairs, loglikelihood, split_whitespace

QUESTION = "Question: What is the capital of France?\nAnswer:"
PAIRS = [
    (QUESTION, " Paris"),
    (QUESTION, " London"),
    (QUESTION, " The city of Berlin, Germany"),  # three choices share one packed row
    ("The cat sat on the ", "mat."),  # trailing space moves onto the continuation
    ("", " Hello world"),  # no context: the BOS alone
]


def _reference(gemma: Any, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
    with torch.no_grad():
        logits = gemma.model(torch.tensor([context_ids + continuation_ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    n = len(context_ids)
    scored = [(logprobs[n - 1 + j], token) for j, token in enumerate(continuation_ids)]
    return sum(row[token].item() for row, token in scored), all(int(row.argmax()) == token for row, token in scored)


def test_packed_scores_equal_one_forward_per_pair(gemma: Any) -> None:
    scores = loglikelihood(gemma, PAIRS, batch_size=2)
    for (context, continuation), score in zip(PAIRS, scores, strict=True):
        context_ids, continuation_ids = encode_pairs(gemma.tokenizer, [(context, continuation)])[0]
        assert context_ids.count(gemma.tokenizer.bos_token_id) == 1 and context_ids[0] == gemma.tokenizer.bos_token_id
        logprob, greedy = _reference(gemma, context_ids, continuation_ids)
        assert score.logprob == pytest.approx(logprob, rel=1e-4, abs=1e-4)
        assert (score.tokens, score.greedy) == (len(continuation_ids), greedy)
    assert scores[0].greedy and scores[0].logprob > scores[1].logprob  # " Paris" is what the model says


def test_tokenisation_splits_as_lm_evaluation_harness(gemma: Any) -> None:
    assert split_whitespace("The cat sat on the ", "mat.") == ("The cat sat on the", " mat.")
    (context, continuation), (_, moved) = encode_pairs(gemma.tokenizer, [("A b ", "c"), ("A b", " c")])
    assert continuation == moved  # the same tokens whichever side the space was on
    whole = gemma.tokenizer("A b c", add_special_tokens=False).input_ids
    assert context[1:] + continuation == whole


def test_block_mask_keeps_choices_apart() -> None:
    # one row: context of 2, choice 1 of 2 tokens, choice 2 of 1 token, one padding position
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    positions = torch.tensor([[0, 1, 2, 3, 2, 0]])
    allowed = block_mask(positions, segments, window=None)[0, 0]
    assert allowed[3].tolist() == [True, True, True, True, False, False]  # choice 1 sees context and itself
    assert allowed[4].tolist() == [True, True, False, False, True, False]  # choice 2 does not see choice 1
    assert allowed[5, 5] and not allowed[5, 2:5].any()  # padding sees no choice (and never an empty row: no NaN)
    windowed = block_mask(positions, segments, window=2)[0, 0]
    assert windowed[3].tolist() == [False, False, True, True, False, False]  # distance in positions < 2
