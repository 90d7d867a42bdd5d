"""Rubric judges as task scorers: single-answer and reference-guided grading of every generated output.

Per sample: a score per dimension (`<rubric>.<dimension>`), the probability-weighted score where the server
returns logprobs (`<rubric>.<dimension>.weighted`), and the raw judge text with any error. Per task: the mean of
each dimension over the judgments that parsed, with a bootstrap interval and the count of failures, which are
excluded, never scored as 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.record import MetricValue
from harness.core.samples import Sample
from harness.core.taskspec import JudgeConfig, TaskSpec
from harness.evaluation.runner import JudgedTask
from harness.metrics.stats import bootstrap
from judges.client import JudgeClient, Judgment
from judges.parse import parse_grades, weighted_scores
from judges.prompt import grade_messages, grade_schema
from judges.rubric import Rubric, find_rubric


def resolve_rubric(spec: TaskSpec, index: int, config: JudgeConfig, rubric_dirs: Iterable[Path]) -> Rubric:
    """The rubric a task's judge entry names; errors point at the task file and the field."""
    try:
        rubric = find_rubric(config.rubric, rubric_dirs)
    except HarnessError as error:
        raise HarnessError(error.message, path=spec.source, field=f"judges.{index}.rubric", hint=error.hint) from None
    if rubric.requires_style and not config.style:
        raise HarnessError(
            f"rubric '{rubric.name}' compares against a style: set style (and style_examples)",
            path=spec.source,
            field=f"judges.{index}.style",
        )
    return rubric


def _dimension_metric(rubric: Rubric, key: str, values: list[float | None], seed: int) -> MetricValue:
    rows = [[value, 1.0] for value in values if value is not None]
    total, count = sum(row[0] for row in rows), len(rows)
    spread = bootstrap(rows, lambda t: {"mean": t[0] / t[1]}, seed=seed).get("mean")
    return MetricValue(
        value=total / count if count else float("nan"),
        metric=f"judge:{rubric.name}",
        higher_is_better=True,
        stderr=spread.stderr if spread else None,
        ci_low=spread.ci_low if spread else None,
        ci_high=spread.ci_high if spread else None,
        n=count,
        n_errors=len(values) - count,
    )


class RubricJudge:
    """A `TaskJudge`: grades each output on each of the task's rubrics through one `JudgeClient`."""

    def __init__(self, client: JudgeClient, rubric_dirs: Sequence[Path] = (), seed: int = 0) -> None:
        self.client = client
        self.rubric_dirs = list(rubric_dirs)
        self.seed = seed

    def check(self, specs: Iterable[TaskSpec]) -> None:
        """Fail before any model work if a task names a missing rubric or lacks what the rubric needs."""
        for spec in specs:
            for index, config in enumerate(spec.judges):
                resolve_rubric(spec, index, config, self.rubric_dirs)

    def __call__(
        self,
        spec: TaskSpec,
        samples: Sequence[Sample],
        predictions: Sequence[str],
        on_judged: Callable[[], None] | None = None,
    ) -> JudgedTask:
        calls_before = self.client.calls
        sample_scores: list[dict[str, float]] = [{} for _ in samples]
        sample_judgments: list[dict[str, Any]] = [{} for _ in samples]
        metrics: dict[str, MetricValue] = {}
        for index, config in enumerate(spec.judges):
            rubric = resolve_rubric(spec, index, config, self.rubric_dirs)
            requests = [
                (
                    grade_messages(
                        rubric,
                        sample.prompt,
                        prediction,
                        reference=sample.references[0] if rubric.requires_reference else None,
                        style=config.style if rubric.requires_style else None,
                        style_examples=config.style_examples,
                    ),
                    grade_schema(rubric),
                )
                for sample, prediction in zip(samples, predictions, strict=True)
            ]
            judgments = self.client.judge_all(requests, functools.partial(parse_grades, rubric=rubric), on_judged)
            self._record(rubric, judgments, sample_scores, sample_judgments)
            for dimension in rubric.dimensions:
                for suffix in ("", ".weighted"):
                    key = f"{rubric.name}.{dimension.name}{suffix}"
                    values = [scores.get(key) for scores in sample_scores]
                    if suffix and all(value is None for value in values):
                        continue  # the server returned no logprobs
                    metrics[key] = _dimension_metric(rubric, key, values, self.seed)
        return JudgedTask(sample_scores, sample_judgments, metrics, self.client.calls - calls_before)

    @staticmethod
    def _record(
        rubric: Rubric,
        judgments: list[Judgment[dict[str, int]]],
        sample_scores: list[dict[str, float]],
        sample_judgments: list[dict[str, Any]],
    ) -> None:
        for judgment, scores, record in zip(judgments, sample_scores, sample_judgments, strict=True):
            record[rubric.name] = {"raw": judgment.raw, "error": judgment.error, "cached": judgment.cached}
            if judgment.value is None:
                continue
            scores.update({f"{rubric.name}.{name}": float(score) for name, score in judgment.value.items()})
            weighted = weighted_scores(judgment.logprobs, rubric)
            scores.update({f"{rubric.name}.{name}.weighted": value for name, value in weighted.items()})
