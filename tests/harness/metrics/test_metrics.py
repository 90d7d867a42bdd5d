"""Metrics against their reference implementations (sacrebleu, rouge-score) and hand-computed pinned cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from harness.metrics import get_metric

CASES = json.loads((Path(__file__).parent / "metric_cases.json").read_text())


def _aggregate(name: str, predictions: list[str], references: list[list[str]], **options: object) -> dict:
    metric_def = get_metric(name)
    scores = [metric_def.score(dict(options), p, r) for p, r in zip(predictions, references, strict=True)]
    rows = metric_def.sufficient_stats(dict(options), scores, predictions, references)
    return metric_def.corpus_value(dict(options), [sum(column) for column in zip(*rows, strict=True)])


@pytest.mark.parametrize("name", ["exact_match", "f1"])
def test_pinned_cases(name: str) -> None:
    metric_def = get_metric(name)
    for case in CASES[name]:
        score = metric_def.score(case.get("options", {}), case["prediction"], case["references"])[name]
        assert score == pytest.approx(case["expected"]), case


@pytest.mark.parametrize("case", CASES["corpus"], ids=["single-ref", "multi-ref"])
def test_bleu_and_chrf_equal_sacrebleu_corpus_scores(case: dict) -> None:
    predictions, references = case["predictions"], case["references"]
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    assert _aggregate("bleu", predictions, references)["bleu"] == sacrebleu.corpus_bleu(predictions, streams).score
    assert _aggregate("chrf", predictions, references)["chrf"] == sacrebleu.corpus_chrf(predictions, streams).score
    chrf_pp = sacrebleu.corpus_chrf(predictions, streams, word_order=2).score
    assert _aggregate("chrf", predictions, references, word_order=2)["chrf"] == chrf_pp


def test_corpus_bleu_is_not_the_mean_of_sentence_bleu() -> None:
    case = CASES["corpus"][0]
    bleu = get_metric("bleu")
    sentence_scores = [
        bleu.score({}, p, r)["bleu"] for p, r in zip(case["predictions"], case["references"], strict=True)
    ]
    corpus = _aggregate("bleu", case["predictions"], case["references"])["bleu"]
    assert corpus != pytest.approx(sum(sentence_scores) / len(sentence_scores))


@pytest.mark.parametrize("use_stemmer", [True, False])
@pytest.mark.parametrize("case", CASES["corpus"], ids=["single-ref", "multi-ref"])
def test_rouge_equals_rouge_score_mean_of_best_reference(case: dict, use_stemmer: bool) -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=use_stemmer)
    ours = _aggregate("rouge", case["predictions"], case["references"], use_stemmer=use_stemmer)
    for rouge_type in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        per_sample = [
            max(scorer.score(ref, pred)[rouge_type].fmeasure for ref in refs)
            for pred, refs in zip(case["predictions"], case["references"], strict=True)
        ]
        assert ours[rouge_type] == pytest.approx(sum(per_sample) / len(per_sample), abs=1e-12)


def test_perplexity_is_token_weighted() -> None:
    from harness.core.registry import SampleStats

    stats = [SampleStats(nll=10.0, tokens=5, bytes=20), SampleStats(nll=90.0, tokens=45, bytes=180)]
    metric_def = get_metric("perplexity", "perplexity")
    scores = [metric_def.score({}, stats=s) for s in stats]
    rows = metric_def.sufficient_stats({}, scores, [], [])
    result = metric_def.corpus_value({}, [sum(column) for column in zip(*rows, strict=True)])
    assert result["perplexity"] == pytest.approx(math.exp(100 / 50))
    assert result["bits_per_byte"] == pytest.approx(100 / (math.log(2) * 200))
    assert result["token_count"] == 50
