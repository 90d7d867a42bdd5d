"""Compare runs: per task and metric, both values, the delta, a paired-bootstrap 95% CI of the delta over the
shared samples, a p-value (exact McNemar for 0/1 outcomes such as exact match and acc, else a paired permutation
test), the smallest difference this sample size could detect, and the samples that flipped most. Reads RunResult
records only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pydantic import BaseModel

from harness.core.errors import HarnessError
from harness.core.record import RunResult, SampleRecord, TaskRunSpec
from harness.core.registry import MetricDef
from harness.metrics.stats import resample_counts
from harness.metrics.tasks import TaskMetric, task_metrics

N_RESAMPLES = 2000  # bootstrap resamples for intervals
N_PERMUTATIONS = 10_000  # random swap patterns for a permutation p-value (Monte Carlo error <= 0.005)
EXACT_PERMUTATION_MAX_N = 12  # up to 2^12 = 4096 patterns: every one, an exact p-value
MDE_FACTOR = 1.959964 + 0.841621  # two-sided alpha 0.05 and 80% power, on the standard error of the delta
N_FLIPS = 5


class MetricComparison(BaseModel):
    task: str
    metric: str
    higher_is_better: bool
    baseline: float
    candidate: float
    delta: float
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_value_error: float | None = None  # the Monte Carlo standard error of a p-value from random permutations
    test: str
    mde: float | None = None
    n: int
    baseline_errors: int | None = None  # judge failures, excluded
    candidate_errors: int | None = None


class Flip(BaseModel):
    id: str
    prompt: str
    references: list[str]
    baseline_output: str | None
    candidate_output: str | None
    baseline_score: float
    candidate_score: float
    delta: float


class TaskComparison(BaseModel):
    task: str
    n_shared: int
    baseline_failed: int = 0  # samples the model gave no output for (a request error), left out of the pairs
    candidate_failed: int = 0
    metrics: list[MetricComparison]
    flip_score: str | None = None
    improved: list[Flip] = []  # the most improved samples by `flip_score`
    regressed: list[Flip] = []
    samples: list[Flip] = []  # every shared sample, for the per-sample table


class RunComparison(BaseModel):
    baseline: str  # run ids
    candidate: str
    baseline_label: str
    candidate_label: str
    tasks: dict[str, TaskComparison]
    pairwise: dict[str, Any] | None = None  # a PairwiseResult (judges/pairwise.py) of candidate vs baseline


class Comparison(BaseModel):
    schema_version: int = 1
    created_at: datetime
    seed: int
    comparisons: list[RunComparison]
    training: dict[str, Any] | None = None  # the last candidate's adapter manifest (loss curves), if any
    forgetting: list[str] = []  # tasks shown as the forgetting panel (general-domain perplexity)


def run_label(run: RunResult) -> str:
    adapter = run.spec.model.adapter_path
    return run.spec.model.name + (f" + {adapter.rstrip('/').split('/')[-1]}" if adapter else "")


def _task_spec(run: RunResult, task: str) -> TaskRunSpec:
    return next(t for t in run.spec.tasks if t.name == task)


def _check_comparable(task: str, baseline: RunResult, candidate: RunResult) -> None:
    a, b = _task_spec(baseline, task), _task_spec(candidate, task)
    if a.version != b.version or a.data_fingerprint != b.data_fingerprint:
        raise HarnessError(
            f"task '{task}' differs between the runs (version {a.version} vs {b.version}, data "
            f"{a.data_fingerprint[:12]} vs {b.data_fingerprint[:12]})",
            field="RUNS",
            hint="compare runs of the same task version on the same data",
        )


def mcnemar_p(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Exact two-sided McNemar test on paired 0/1 outcomes (a binomial test on the discordant pairs)."""
    only_baseline = sum(a > b for a, b in zip(baseline, candidate, strict=True))
    only_candidate = sum(b > a for a, b in zip(baseline, candidate, strict=True))
    n = only_baseline + only_candidate
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_baseline, only_candidate) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _corpus_deltas(
    value: Callable[[Sequence[float]], dict[str, float]],
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    weights_a: np.ndarray,
    weights_b: np.ndarray,
    key: str,
) -> np.ndarray:
    totals_a, totals_b = weights_a @ rows_a, weights_b @ rows_b
    return np.array(
        [value(tb.tolist())[key] - value(ta.tolist())[key] for ta, tb in zip(totals_a, totals_b, strict=True)]
    )


@dataclass(frozen=True)
class PairedStats:
    """The paired difference value(B) - value(A): its bootstrap interval and standard error, and its permutation
    p-value (exact over every swap pattern for a few pairs; else from random swaps, with their Monte Carlo error)."""

    ci_low: float
    ci_high: float
    stderr: float
    p_value: float
    p_value_error: float | None
    test: str


def _swap_patterns(n: int, seed: int) -> tuple[np.ndarray, bool]:
    """Which pairs swap sides, one row per permutation: all 2^n patterns when that is few, else random draws."""
    if n <= EXACT_PERMUTATION_MAX_N:
        return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64), True
    return np.random.default_rng(seed + 1).integers(0, 2, size=(N_PERMUTATIONS, n)).astype(np.float64), False


def paired_statistics(
    value: Callable[[Sequence[float]], dict[str, float]], rows_a: np.ndarray, rows_b: np.ndarray, key: str, seed: int
) -> PairedStats:
    """Bootstrap interval and permutation test of value(B) - value(A) over paired rows of sufficient statistics."""
    n = len(rows_a)
    counts = resample_counts(n, N_RESAMPLES, seed).astype(np.float64)
    boot = _corpus_deltas(value, rows_a, rows_b, counts, counts, key)
    boot = boot[np.isfinite(boot)]
    swaps, exact = _swap_patterns(n, seed)
    permuted = _corpus_deltas(
        value,
        np.concatenate([rows_a, rows_b]),
        np.concatenate([rows_a, rows_b]),
        np.concatenate([1 - swaps, swaps], axis=1),
        np.concatenate([swaps, 1 - swaps], axis=1),
        key,
    )
    observed = value(rows_b.sum(0).tolist())[key] - value(rows_a.sum(0).tolist())[key]
    extreme = int(np.sum(np.abs(permuted) >= abs(observed) - 1e-12))
    if exact:  # the identity pattern is among them, so the p-value is never 0
        p_value, p_error, test = extreme / len(permuted), None, "exact paired permutation"
    else:
        p_value = (1 + extreme) / (1 + len(permuted))
        p_error, test = (
            math.sqrt(p_value * (1 - p_value) / len(permuted)),
            f"paired permutation ({N_PERMUTATIONS} draws)",
        )
    low, high = np.percentile(boot, [2.5, 97.5])
    return PairedStats(float(low), float(high), float(boot.std(ddof=1)), float(p_value), p_error, test)


def _metric_rows(scorer: TaskMetric, samples: Sequence[SampleRecord]) -> tuple[Any, np.ndarray]:
    metric_def = scorer.definition
    rows = metric_def.sufficient_stats(
        scorer.options,
        [s.scores for s in samples],
        [s.output or "" for s in samples],
        [s.references for s in samples],
    )
    return metric_def, np.asarray(rows, dtype=np.float64)


def _binary_mean(metric_def: Any, rows_a: np.ndarray, rows_b: np.ndarray) -> bool:
    """Whether the metric is a mean of 0/1 per-sample outcomes (exact match, acc): then McNemar's test applies."""
    plain_mean = metric_def.corpus_stats is None and metric_def.from_stats is None and len(metric_def.keys) == 1
    return plain_mean and bool(np.isin(np.concatenate([rows_a[:, 0], rows_b[:, 0]]), (0.0, 1.0)).all())


def _compare_metrics(
    task: str, scorer: TaskMetric, a: list[SampleRecord], b: list[SampleRecord], seed: int
) -> list[MetricComparison]:
    metric_def, rows_a = _metric_rows(scorer, a)
    _, rows_b = _metric_rows(scorer, b)
    options = scorer.options

    def value(totals: Sequence[float]) -> dict[str, float]:
        return metric_def.corpus_value(options, totals)

    comparisons = []
    for key in value(rows_a.sum(0).tolist()):
        if key in metric_def.info_keys:
            continue
        baseline, candidate = value(rows_a.sum(0).tolist())[key], value(rows_b.sum(0).tolist())[key]
        stats = paired_statistics(value, rows_a, rows_b, key, seed)
        p_value, p_error, test = stats.p_value, stats.p_value_error, stats.test
        if _binary_mean(metric_def, rows_a, rows_b):
            p_value, p_error = mcnemar_p(rows_a[:, 0].tolist(), rows_b[:, 0].tolist()), None
            test = "exact McNemar"
        comparisons.append(
            MetricComparison(
                task=task,
                metric=key,
                higher_is_better=metric_def.higher_is_better,
                baseline=baseline,
                candidate=candidate,
                delta=candidate - baseline,
                ci_low=stats.ci_low,
                ci_high=stats.ci_high,
                p_value=p_value,
                p_value_error=p_error,
                test=test,
                mde=MDE_FACTOR * stats.stderr,
                n=len(a),
            )
        )
    return comparisons


def _compare_judge_scores(
    task: str, key: str, a: list[SampleRecord], b: list[SampleRecord], seed: int
) -> MetricComparison:
    pairs = [(x.scores[key], y.scores[key]) for x, y in zip(a, b, strict=True) if key in x.scores and key in y.scores]
    rows_a = np.array([[p[0], 1.0] for p in pairs]).reshape(-1, 2)
    rows_b = np.array([[p[1], 1.0] for p in pairs]).reshape(-1, 2)

    def mean(totals: Sequence[float]) -> dict[str, float]:
        return {key: totals[0] / totals[1] if totals[1] else math.nan}

    baseline, candidate = mean(rows_a.sum(0).tolist())[key], mean(rows_b.sum(0).tolist())[key]
    stats = paired_statistics(mean, rows_a, rows_b, key, seed) if len(pairs) >= 2 else None
    return MetricComparison(
        task=task,
        metric=key,
        higher_is_better=True,
        baseline=baseline,
        candidate=candidate,
        delta=candidate - baseline,
        ci_low=stats.ci_low if stats else None,
        ci_high=stats.ci_high if stats else None,
        p_value=stats.p_value if stats else None,
        p_value_error=stats.p_value_error if stats else None,
        test=stats.test if stats else "paired permutation",
        mde=MDE_FACTOR * stats.stderr if stats else None,
        n=len(pairs),
        baseline_errors=sum(key not in s.scores for s in a),
        candidate_errors=sum(key not in s.scores for s in b),
    )


def _flips(
    a: list[SampleRecord], b: list[SampleRecord], score: str, higher_is_better: bool
) -> tuple[list[Flip], list[Flip], list[Flip]]:
    flips = [
        Flip(
            id=x.id,
            prompt=x.prompt,
            references=x.references,
            baseline_output=x.output,
            candidate_output=y.output,
            baseline_score=x.scores[score],
            candidate_score=y.scores[score],
            delta=y.scores[score] - x.scores[score],
        )
        for x, y in zip(a, b, strict=True)
        if score in x.scores and score in y.scores
    ]
    sign = 1 if higher_is_better else -1
    better = sorted((f for f in flips if sign * f.delta > 0), key=lambda f: -sign * f.delta)
    worse = sorted((f for f in flips if sign * f.delta < 0), key=lambda f: sign * f.delta)
    return better[:N_FLIPS], worse[:N_FLIPS], flips


def compare_task(task: str, baseline: RunResult, candidate: RunResult, seed: int) -> TaskComparison:
    _check_comparable(task, baseline, candidate)
    result_a, result_b = baseline.tasks[task], candidate.tasks[task]
    judge_keys = [k for k, v in result_a.metrics.items() if v.metric.startswith("judge:") and k in result_b.metrics]
    config = _task_spec(baseline, task).config
    return _compare_samples(task, config, result_a.samples, result_b.samples, judge_keys, seed)


def compare_group(group: str, baseline: RunResult, candidate: RunResult, seed: int) -> TaskComparison | None:
    """A micro-averaged group as one task over its tasks' pooled samples (ids `task/id`); None for a macro group,
    whose value is not a per-sample mean."""
    group_a = baseline.groups[group]
    tasks = [t for t in group_a.tasks if t in candidate.tasks and t in baseline.tasks]
    if group_a.aggregate != "micro" or not tasks:
        return None
    for task in tasks:
        _check_comparable(task, baseline, candidate)

    def pooled(run: RunResult) -> list[SampleRecord]:
        return [s.model_copy(update={"id": f"{t}/{s.id}"}) for t in tasks for s in run.tasks[t].samples]

    config = _task_spec(baseline, tasks[0]).config
    return _compare_samples(group, config, pooled(baseline), pooled(candidate), [], seed)


def _compare_samples(
    task: str,
    config: dict[str, Any],
    samples_a: list[SampleRecord],
    samples_b: list[SampleRecord],
    judge_keys: list[str],
    seed: int,
) -> TaskComparison:
    by_id = {s.id: s for s in samples_b if s.error is None}  # a sample the model gave no output for pairs with none
    shared_a = [s for s in samples_a if s.id in by_id and s.error is None]
    shared_b = [by_id[s.id] for s in shared_a]
    if not shared_a:
        raise HarnessError(
            f"task '{task}' has no sample ids in common between the runs (with an output in both)", field="RUNS"
        )
    scorers = task_metrics(config.get("kind", "generate"), config["metrics"], config.get("filters", []))
    metrics = [m for scorer in scorers for m in _compare_metrics(task, scorer, shared_a, shared_b, seed)]
    metrics += [_compare_judge_scores(task, key, shared_a, shared_b, seed) for key in judge_keys]
    flip_score, higher = _flip_score(scorers[0].definition, shared_a)
    improved, regressed, samples = _flips(shared_a, shared_b, flip_score, higher) if flip_score else ([], [], [])
    return TaskComparison(
        task=task,
        n_shared=len(shared_a),
        baseline_failed=sum(s.error is not None for s in samples_a),
        candidate_failed=sum(s.error is not None for s in samples_b),
        metrics=metrics,
        flip_score=flip_score,
        improved=improved,
        regressed=regressed,
        samples=samples,
    )


def _flip_score(metric_def: MetricDef, samples: Sequence[SampleRecord]) -> tuple[str | None, bool]:
    """The per-sample score that ranks flips: the task's first metric's first per-sample score."""
    scores = samples[0].scores if samples else {}
    key = next((k for k in (*metric_def.keys, *metric_def.stat_keys) if k in scores), None)
    if metric_def.kind == "perplexity":
        return ("nll", False) if "nll" in scores else (None, False)
    return key, metric_def.higher_is_better


def _group_comparisons(baseline: RunResult, candidate: RunResult, seed: int) -> dict[str, TaskComparison]:
    """The micro groups both runs report, each compared as one task (listed after the tasks)."""
    shared = [g for g in baseline.groups if g in candidate.groups]
    compared = {g: compare_group(g, baseline, candidate, seed) for g in shared}
    return {g: c for g, c in compared.items() if c is not None}


def compare_runs(runs: Sequence[RunResult], seed: int = 0, pairwise: dict[str, Any] | None = None) -> Comparison:
    """Each later run against the first (the baseline), on the tasks both ran."""
    if len(runs) < 2:
        raise HarnessError("compare needs at least two runs", field="RUNS")
    baseline = runs[0]
    comparisons = []
    for candidate in runs[1:]:
        shared = [task for task in baseline.tasks if task in candidate.tasks]
        if not shared:
            raise HarnessError(f"runs {baseline.run_id} and {candidate.run_id} share no task", field="RUNS")
        comparisons.append(
            RunComparison(
                baseline=baseline.run_id,
                candidate=candidate.run_id,
                baseline_label=run_label(baseline),
                candidate_label=run_label(candidate),
                tasks={t: compare_task(t, baseline, candidate, seed) for t in shared}
                | _group_comparisons(baseline, candidate, seed),
                pairwise=pairwise if len(runs) == 2 else None,
            )
        )
    return Comparison(
        created_at=datetime.now(timezone.utc), seed=seed, comparisons=comparisons, training=runs[-1].spec.model.training
    )
