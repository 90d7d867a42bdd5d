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
from typing import TYPE_CHECKING, Any, Literal

from harness.core.errors import HarnessError

if TYPE_CHECKING:
    from harness.core.taskspec import TaskSpec

TaskKind = Literal["generate", "perplexity"]


@dataclass(frozen=True)
class SampleStats:
    """Log-likelihood of one scored text: summed NLL (nats), scored tokens, UTF-8 bytes of the text."""

    nll: float
    tokens: int
    bytes: int


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

    def option_names(self) -> list[str]:
        """Keyword options the metric function accepts (after prediction/references or stats)."""
        positional = 1 if self.kind == "perplexity" else 2
        return list(inspect.signature(self.fn).parameters)[positional:]

    def score(
        self,
        options: dict[str, Any],
        prediction: str = "",
        references: Sequence[str] = (),
        stats: SampleStats | None = None,
    ) -> dict[str, float]:
        """Per-sample scores, keyed by score name."""
        value = self.fn(stats, **options) if self.kind == "perplexity" else self.fn(prediction, references, **options)
        return value if isinstance(value, dict) else {self.name: float(value)}

    def sufficient_stats(
        self,
        options: dict[str, Any],
        sample_scores: Sequence[dict[str, float]],
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
    ) -> list[list[float]]:
        """One row of additive statistics per sample: the metric's own (BLEU n-gram counts), the per-sample
        scores named by `stat_keys` (perplexity: NLL, tokens, bytes), or the scores plus a count (a mean)."""
        if self.corpus_stats is not None:
            return self.corpus_stats(predictions, references, **options)
        if self.stat_keys:
            return [[scores[key] for key in self.stat_keys] for scores in sample_scores]
        return [[scores[key] for key in self.keys] + [1.0] for scores in sample_scores]

    def corpus_value(self, options: dict[str, Any], totals: Sequence[float]) -> dict[str, float]:
        """The corpus value(s) from the column sums of `sufficient_stats`."""
        if self.from_stats is not None:
            return self.from_stats(totals, **options)
        count = totals[-1]
        return {key: totals[i] / count if count else math.nan for i, key in enumerate(self.keys)}


@dataclass
class _Registry:
    metrics: dict[str, MetricDef] = field(default_factory=dict)
    python_tasks: dict[str, Callable[[], TaskSpec]] = field(default_factory=dict)


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
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a per-sample metric function under `name`.

    `keys` are the reported corpus values (default: just `name`), by default the mean of the per-sample
    scores. A corpus metric supplies `corpus_stats` (per-sample additive statistics from all predictions and
    references) or `stat_keys` (per-sample scores to sum), and `from_stats` (corpus values from the sums).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY.metrics and _REGISTRY.metrics[name].fn is not fn:
            raise ValueError(f"metric '{name}' is registered twice")
        _REGISTRY.metrics[name] = MetricDef(
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
        )
        return fn

    return register


def task(name: str) -> Callable[[Callable[[], TaskSpec]], Callable[[], TaskSpec]]:
    """Register a Python task: a function that returns a `TaskSpec` (for anything YAML can't say)."""

    def register(fn: Callable[[], TaskSpec]) -> Callable[[], TaskSpec]:
        _REGISTRY.python_tasks[name] = fn
        return fn

    return register


def registered_metrics() -> dict[str, MetricDef]:
    """Every metric registered so far, by name (harness.metrics registers the built-in ones when imported)."""
    return dict(_REGISTRY.metrics)


def lookup_metric(name: str, *, path: Path | None = None, field_name: str = "metrics") -> MetricDef:
    """The metric registered as `name`; an unknown name is a user error that lists the known ones."""
    if name not in _REGISTRY.metrics:
        known = ", ".join(sorted(_REGISTRY.metrics))
        raise HarnessError(f"unknown metric '{name}'", path=path, field=field_name, hint=f"known metrics: {known}")
    return _REGISTRY.metrics[name]


def registered_tasks() -> dict[str, Callable[[], TaskSpec]]:
    """Every `@task` function registered so far, by task name."""
    return dict(_REGISTRY.python_tasks)
