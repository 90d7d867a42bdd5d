"""Built-in metrics of generated text: pure per-sample functions `(prediction, references, **options)` plus corpus
aggregations. Corpus metrics (BLEU, chrF) aggregate over the corpus through sacrebleu instead of averaging sentence
scores.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import cast

import sacrebleu
from rouge_score import rouge_scorer

from harness.core.registry import metric
from harness.core.text import normalize_text


@metric("exact_match", description="1 if the normalised prediction equals a normalised reference")
def exact_match(
    prediction: str,
    references: Sequence[str],
    ignore_case: bool = True,
    ignore_punctuation: bool = True,
    ignore_articles: bool = True,
    regexes_to_ignore: Sequence[str] = (),
) -> float:
    """`regexes_to_ignore` are deleted from both sides first, in order (lm-evaluation-harness's GSM8K reduces a
    worked answer to its number so)."""
    options = {
        "ignore_case": ignore_case,
        "ignore_punctuation": ignore_punctuation,
        "ignore_articles": ignore_articles,
    }

    def normal(text: str) -> str:
        for pattern in regexes_to_ignore:
            text = re.sub(pattern, "", text)
        return normalize_text(text, **options)

    predicted = normal(prediction)
    return float(any(predicted == normal(ref) for ref in references))


def _token_f1(prediction: str, reference: str) -> float:
    predicted_tokens = normalize_text(prediction).split()
    reference_tokens = normalize_text(reference).split()
    if not predicted_tokens or not reference_tokens:
        # SQuAD convention: two empty answers agree, an empty and a non-empty one do not.
        return float(predicted_tokens == reference_tokens)
    common = Counter(predicted_tokens) & Counter(reference_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


@metric("f1", description="SQuAD token F1 against the best-matching reference")
def token_f1(prediction: str, references: Sequence[str]) -> float:
    return max(_token_f1(prediction, ref) for ref in references)


def _transpose(references: Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu wants one stream per reference position; samples may carry different counts (None pads,
    which sacrebleu documents as allowed though its type hints say str)."""
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return cast(list[list[str]], streams)


@lru_cache(maxsize=16)
def _bleu(tokenize: str, lowercase: bool, effective_order: bool = False) -> sacrebleu.BLEU:
    return sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=effective_order)


@lru_cache(maxsize=16)
def _chrf(word_order: int) -> sacrebleu.CHRF:
    return sacrebleu.CHRF(word_order=word_order)


def _signature(
    scorer: sacrebleu.metrics.base.Metric, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> str:
    scorer.corpus_score(list(predictions), _transpose(references))  # the signature names the reference count
    return str(scorer.get_signature())


def _segment_stats(
    scorer: sacrebleu.metrics.base.Metric, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> list[list[float]]:
    """sacrebleu's per-segment sufficient statistics (what its own paired bootstrap resamples)."""
    rows = scorer._extract_corpus_statistics(list(predictions), _transpose(references))
    return [[float(x) for x in row] for row in rows]


def bleu_stats(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenize: str = "13a",
    lowercase: bool = False,
) -> list[list[float]]:
    return _segment_stats(_bleu(tokenize, lowercase), predictions, references)


def bleu_from_stats(totals: Sequence[float], tokenize: str = "13a", lowercase: bool = False) -> dict[str, float]:
    return {"bleu": _bleu(tokenize, lowercase)._compute_score_from_stats([int(x) for x in totals]).score}


def bleu_signature(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenize: str = "13a",
    lowercase: bool = False,
) -> str:
    return _signature(sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase), predictions, references)


@metric(
    "bleu",
    corpus_stats=bleu_stats,
    from_stats=bleu_from_stats,
    signature=bleu_signature,
    description="sacrebleu corpus BLEU (per-sample: sentence BLEU with effective order)",
)
def sentence_bleu(prediction: str, references: Sequence[str], tokenize: str = "13a", lowercase: bool = False) -> float:
    return _bleu(tokenize, lowercase, effective_order=True).sentence_score(prediction, list(references)).score


def chrf_stats(
    predictions: Sequence[str], references: Sequence[Sequence[str]], word_order: int = 0
) -> list[list[float]]:
    return _segment_stats(_chrf(word_order), predictions, references)


def chrf_from_stats(totals: Sequence[float], word_order: int = 0) -> dict[str, float]:
    return {"chrf": _chrf(word_order)._compute_score_from_stats([int(x) for x in totals]).score}


def chrf_signature(predictions: Sequence[str], references: Sequence[Sequence[str]], word_order: int = 0) -> str:
    return _signature(sacrebleu.CHRF(word_order=word_order), predictions, references)


@metric(
    "chrf",
    corpus_stats=chrf_stats,
    from_stats=chrf_from_stats,
    signature=chrf_signature,
    description="sacrebleu corpus chrF (word_order=2: chrF++)",
)
def sentence_chrf(prediction: str, references: Sequence[str], word_order: int = 0) -> float:
    return _chrf(word_order).sentence_score(prediction, list(references)).score


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@lru_cache(maxsize=4)
def _rouge_scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)


@metric("rouge", keys=ROUGE_TYPES, description="rouge-score F-measure, best reference, mean over samples")
def rouge(prediction: str, references: Sequence[str], use_stemmer: bool = True) -> dict[str, float]:
    scores = _rouge_scorer(use_stemmer).score_multi(list(references), prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}
