"""The one registry: metrics and Python tasks register here by decorator.

Nothing else in the project lists tasks or metrics by hand. The built-in metrics register when harness.metrics is
imported; YAML tasks are found on a search path by harness.evaluation.catalog.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.errors import HarnessError

if TYPE_CHECKING:
    from harness.core.taskspec import GroupSpec, TaskKind, TaskSpec


@dataclass(frozen=True)
class SampleStats:
    """Log-likelihood of one scored text: summed NLL (nats), scored tokens, UTF-8 bytes of the text."""

    nll: float
    tokens: int
    bytes: int


@dataclass(frozen=True)
class ChoiceStats:
    """One continuation scored given its context: summed log-probability (nats), scored tokens, the length in
    characters of the choice text (acc_norm divides by it, as lm-evaluation-harness does), whether greedy decoding
    would have produced it, and its log-probability with no context (for acc_mutual_info; None when not asked)."""

    logprob: float
    tokens: int
    length: int
    greedy: bool
    unconditional: float | None = None


@dataclass(frozen=True)
class MetricDef:
    """A registered metric: a pure per-sample function, and how the corpus value comes from additive
    per-sample sufficient statistics (so corpus metrics like BLEU and token-weighted perplexity bootstrap
    by resampling rows of statistics instead of recomputing from text)."""

    name: str
    fn: Callable[..., float | dict[str, float]]
    kind: TaskKind = "generate"
    higher_is_better: bool = True
    keys: tuple[str, ...] = ()
    info_keys: tuple[str, ...] = ()
    stat_keys: tuple[str, ...] = ()
    corpus_stats: Callable[..., list[list[float]]] | None = None
    from_stats: Callable[..., dict[str, float]] | None = None
    signature: Callable[..., str] | None = None
    description: str = ""
    needs_unconditional: bool = False  # multiple_choice: also score each choice with no context

    def option_names(self) -> list[str]:
        """Keyword options the metric function accepts (after its positional inputs: see `score`)."""
        positional = 1 if self.kind == "perplexity" else 2
        return list(inspect.signature(self.fn).parameters)[positional:]

    def score(
        self,
        options: dict[str, Any],
        prediction: str = "",
        references: Sequence[str] = (),
        stats: SampleStats | None = None,
        choices: Sequence[ChoiceStats] = (),
        gold: Sequence[int] = (),
    ) -> dict[str, float]:
        """Per-sample scores, keyed by score name. The function's inputs follow the task kind: (prediction,
        references) for generate, (stats) for perplexity, (choices, gold indices) for multiple_choice and
        loglikelihood (whose one continuation is choice 0)."""
        if self.kind == "perplexity":
            value = self.fn(stats, **options)
        elif self.kind == "generate":
            value = self.fn(prediction, references, **options)
        else:
            value = self.fn(choices, gold, **options)
        return value if isinstance(value, dict) else {self.name: float(value)}

    def sufficient_stats(
        self,
        options: dict[str, Any],
        sample_scores: Sequence[dict[str, float]],
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
    ) -> list[list[float]]:
        """One row of additive statistics per sample: the metric's own (BLEU n-gram counts), or the per-sample
        scores named by `stat_keys` (perplexity: NLL, tokens, bytes; default: the reported keys) plus a count."""
        if self.corpus_stats is not None:
            return self.corpus_stats(predictions, references, **options)
        return [[scores[key] for key in self.stat_keys or self.keys] + [1.0] for scores in sample_scores]

    def corpus_value(self, options: dict[str, Any], totals: Sequence[float]) -> dict[str, float]:
        """The corpus value(s) from the column sums of `sufficient_stats`."""
        if self.from_stats is not None:
            return self.from_stats(totals, **options)
        count = totals[-1]
        return {key: totals[i] / count if count else math.nan for i, key in enumerate(self.keys)}


@dataclass
class _Registry:
    metrics: dict[tuple[str, TaskKind], MetricDef] = field(default_factory=dict)
    python_tasks: dict[str, Callable[[], TaskSpec]] = field(default_factory=dict)
    preprocessors: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=dict)
    groups: dict[str, GroupSpec] = field(default_factory=dict)


_REGISTRY = _Registry()


def metric(
    name: str,
    *,
    kind: TaskKind = "generate",
    higher_is_better: bool = True,
    keys: Sequence[str] | None = None,
    info_keys: Sequence[str] = (),
    stat_keys: Sequence[str] = (),
    corpus_stats: Callable[..., list[list[float]]] | None = None,
    from_stats: Callable[..., dict[str, float]] | None = None,
    signature: Callable[..., str] | None = None,
    description: str = "",
    needs_unconditional: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a per-sample metric function under `name`.

    `keys` are the reported corpus values (default: just `name`), by default the mean of the per-sample
    scores. A corpus metric supplies `corpus_stats` (per-sample additive statistics from all predictions and
    references) or `stat_keys` (per-sample scores to sum), and `from_stats` (corpus values from the sums).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if (name, kind) in _REGISTRY.metrics and _REGISTRY.metrics[name, kind].fn is not fn:
            raise ValueError(f"metric '{name}' is registered twice for {kind} tasks")
        _REGISTRY.metrics[name, kind] = MetricDef(
            name=name,
            fn=fn,
            kind=kind,
            higher_is_better=higher_is_better,
            keys=tuple(keys) if keys else (name,),
            info_keys=tuple(info_keys),
            stat_keys=tuple(stat_keys),
            corpus_stats=corpus_stats,
            from_stats=from_stats,
            signature=signature,
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            needs_unconditional=needs_unconditional,
        )
        return fn

    return register


def task(name: str) -> Callable[[Callable[[], TaskSpec]], Callable[[], TaskSpec]]:
    """Register a Python task: a function that returns a `TaskSpec` (for anything YAML can't say)."""

    def register(fn: Callable[[], TaskSpec]) -> Callable[[], TaskSpec]:
        _REGISTRY.python_tasks[name] = fn
        return fn

    return register


def register_group(spec: GroupSpec) -> GroupSpec:
    """Register a group of tasks from Python (a family of generated tasks, like MMLU's subjects)."""
    _REGISTRY.groups[spec.group] = spec
    return spec


def registered_groups() -> dict[str, GroupSpec]:
    """Every group registered from Python so far, by name."""
    return dict(_REGISTRY.groups)


def preprocessor(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a row processor: a function from one data row (a dict) to the row the task's templates see, for
    cleaning a template cannot say (HellaSwag's); a task names it in `preprocess:`."""

    def register(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        _REGISTRY.preprocessors[name] = fn
        return fn

    return register


def lookup_preprocessor(name: str, path: Path | None = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The row processor registered as `name`; an unknown one is a user error that lists the known ones."""
    if name not in _REGISTRY.preprocessors:
        known = ", ".join(sorted(_REGISTRY.preprocessors)) or "none"
        raise HarnessError(f"unknown preprocess '{name}'", path=path, field="preprocess", hint=f"registered: {known}")
    return _REGISTRY.preprocessors[name]


def registered_metrics() -> dict[tuple[str, TaskKind], MetricDef]:
    """Every metric registered so far, by (name, task kind): one name may score several kinds (`acc` scores
    multiple_choice and loglikelihood tasks). harness.metrics registers the built-in ones when imported."""
    return dict(_REGISTRY.metrics)


def lookup_metric(
    name: str,
    kind: TaskKind | None = None,
    *,
    path: Path | None = None,
    field_name: str = "metrics",
    line: int | None = None,
) -> MetricDef:
    """The metric registered as `name` for tasks of `kind` (None: the only kind it has, else its first); an unknown
    name, or one that scores other kinds, is a user error that lists the names this kind can use."""
    kinds = [k for (n, k) in _REGISTRY.metrics if n == name]
    if kind in kinds or (kind is None and kinds):
        return _REGISTRY.metrics[name, kind or kinds[0]]
    usable = sorted(n for (n, k) in _REGISTRY.metrics if kind is None or k == kind)
    problem = (
        f"metric '{name}' scores {' and '.join(kinds)} tasks, not {kind} tasks" if kinds else f"unknown metric '{name}'"
    )
    label = f"metrics for {kind} tasks" if kind else "known metrics"
    raise HarnessError(problem, path=path, line=line, field=field_name, hint=f"{label}: {', '.join(usable)}")


def registered_tasks() -> dict[str, Callable[[], TaskSpec]]:
    """Every `@task` function registered so far, by task name."""
    return dict(_REGISTRY.python_tasks)
