"""Parsing a judge's answer: pure functions, no I/O. An answer that does not parse is an error, never a 0."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from judges.rubric import SCALE, Rubric


class JudgeParseError(ValueError):
    """The judge's answer is not the JSON the prompt asked for."""


class Grade(BaseModel):
    reason: str = ""
    score: int = Field(ge=1, le=5)

    @field_validator("score", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        """JSON true would pass as 1 and "4" as 4: a score is a JSON number (4.0 is 4)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"a score is a number, not {json.dumps(value)}")
        return value


class PairwiseVerdict(BaseModel):
    reason: str = ""
    winner: Literal["A", "B", "tie"]


def _json_object(raw: str) -> dict[str, Any]:
    text = raw.strip()
    if text.startswith("```"):  # some servers wrap JSON in a code fence despite json mode
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise JudgeParseError(f"not JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(value, dict):
        raise JudgeParseError("not a JSON object")
    return value


def parse_grades(raw: str, rubric: Rubric) -> dict[str, int]:
    """Scores per rubric dimension from the judge's JSON answer."""
    value = _json_object(raw)
    scores = {}
    for dimension in rubric.dimensions:
        if dimension.name not in value:
            raise JudgeParseError(f"missing dimension '{dimension.name}'")
        try:
            scores[dimension.name] = Grade.model_validate(value[dimension.name]).score
        except ValidationError as error:
            raise JudgeParseError(f"dimension '{dimension.name}': {error.errors()[0]['msg']}") from None
    return scores


def parse_pairwise(raw: str) -> Literal["A", "B", "tie"]:
    try:
        return PairwiseVerdict.model_validate(_json_object(raw)).winner
    except ValidationError as error:
        raise JudgeParseError(f"{error.errors()[0]['loc']}: {error.errors()[0]['msg']}") from None


def weighted_scores(tokens: Sequence[dict[str, Any]], rubric: Rubric) -> dict[str, float]:
    """G-Eval style: for each dimension, the expected score under the judge's probabilities for the score
    token (from `top_logprobs`). Dimensions whose score token cannot be located are left out."""
    weighted: dict[str, float] = {}
    text = ""
    for token in tokens:
        for dimension in rubric.dimensions:
            start = text.rfind(f'"{dimension.name}"')
            if dimension.name in weighted or start < 0:
                continue
            if re.fullmatch(r'"\w+"\s*:\s*\{[^{}]*"score"\s*:\s*', text[start:]):
                expected = _expected_level(token.get("top_logprobs") or [])
                if expected is not None:
                    weighted[dimension.name] = expected
        text += str(token.get("token", ""))
    return weighted


def _expected_level(top_logprobs: Sequence[dict[str, Any]]) -> float | None:
    probabilities: dict[int, float] = {}
    for candidate in top_logprobs:
        word = str(candidate.get("token", "")).strip()
        if word.isdigit() and int(word) in SCALE:
            probabilities[int(word)] = probabilities.get(int(word), 0.0) + math.exp(candidate["logprob"])
    total = sum(probabilities.values())
    return sum(level * p for level, p in probabilities.items()) / total if total > 0 else None
