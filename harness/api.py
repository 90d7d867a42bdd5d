"""The Python API: `harness train`, `harness run`, `harness compare` and `harness gate` as functions that return
their records, for notebooks, scripts and a user's own test suite. The CLI is a layer over these.

    import harness

    adapter = harness.train("data/train.jsonl", "adapters/mine", config="train.yaml", max_steps=50)
    base = harness.evaluate(tasks=["factual_qa", "hellaswag"], limit=50)
    tuned = harness.evaluate(tasks=["factual_qa", "hellaswag"], limit=50, adapter=adapter.path)
    comparison = harness.compare(base, tuned)
    outcomes = harness.gate(comparison, "examples/gate.yaml")
    assert all(outcome.passed for outcome in outcomes), [o.detail for o in outcomes if not o.passed]

Bad input raises `HarnessError` (the message names the file, line and field), as the CLI prints it. Models stay
loaded between calls in one process, so evaluating several adapters over one base loads the base once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.backends.embedded import EMBEDDED_MODEL
from harness.backends.hf import LoadedModel, ModelOptions, check_adapter, resolve_adapter_dir
from harness.backends.hf_backend import HFBackend
from harness.backends.protocol import Backend, check_tasks
from harness.backends.select import ServedOptions, backend_kind, open_backend
from harness.comparison.compare import RunComparison, compare_runs
from harness.comparison.gate import GateRules, RuleOutcome, load_rules, run_gate
from harness.core.cache import ResultCache
from harness.core.record import RunResult
from harness.evaluation.catalog import add_search_path, resolve_tasks
from harness.evaluation.runner import RunOptions, TaskJudge, prepare_tasks
from harness.evaluation.runner import evaluate as evaluate_prepared

_LOADED: dict[ModelOptions, HFBackend] = {}  # transformers models kept loaded for later calls in this process


@dataclass(frozen=True)
class Prompting:
    """Run-time prompt controls over the tasks' own settings (all go into the run record and the cache key)."""

    num_fewshot: int | None = None
    system_prompt: str | None = None
    gen_kwargs: dict[str, Any] | None = None
    apply_chat_template: bool | None = None


def _backend(options: ModelOptions, served: ServedOptions, adapters: bool) -> Backend:
    """The model's backend; a transformers model is loaded once per process and options."""
    if backend_kind(options.name) != "hf":
        return open_backend(options, served, adapters=adapters)
    if options not in _LOADED:
        backend = open_backend(options, served, adapters=adapters)
        assert isinstance(backend, HFBackend)
        _LOADED[options] = backend
    return _LOADED[options]


def _adapter_name(loaded: LoadedModel, path: Path) -> str:
    """The adapter's name over the base, registering it on first use (the same folder is attached once)."""
    resolved = path.resolve()
    known = next((name for name, info in loaded.adapters.items() if info.path == resolved), None)
    return known or loaded.load_adapter(path)


def evaluate_each(
    model: str = EMBEDDED_MODEL,
    tasks: Sequence[str] = (),
    adapters: Sequence[str | Path] = (),
    *,
    tasks_dir: Sequence[Path] = (),
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    prompting: Prompting | None = None,
    cache: bool | Path = True,
    judge: TaskJudge | None = None,
    model_options: dict[str, Any] | None = None,
    served: ServedOptions | None = None,
    console: Console | None = None,
) -> Iterator[RunResult]:
    """One RunResult per adapter (or one for the bare model when none is given), each yielded when it is done.
    Everything that can be checked is checked before any model work: the tasks and their data, the adapters, the
    model's backend against the tasks. `judge`: a TaskJudge (judges.scoring.RubricJudge) for tasks with judges."""
    options = ModelOptions.model_validate({"name": model, **(model_options or {})})
    prompting = prompting or Prompting()
    specs, groups = resolve_tasks(list(tasks), list(tasks_dir))
    specs = [
        spec.with_overrides(
            prompting.num_fewshot, prompting.system_prompt, prompting.gen_kwargs, prompting.apply_chat_template
        )
        for spec in specs
    ]
    prepared = prepare_tasks(specs, limit)
    backend = _backend(options, served or ServedOptions(), adapters=bool(adapters))
    adapter_dirs = [resolve_adapter_dir(name) for name in adapters]
    for path in adapter_dirs:
        check_adapter(path)
    check_tasks(backend, specs)
    run_options = RunOptions(limit=limit, batch_size=batch_size, seed=seed, judge=judge)
    result_cache = ResultCache(cache if isinstance(cache, Path) else ResultCache.default_path() if cache else None)
    try:
        each: list[Path | None] = [*adapter_dirs] or [None]
        for adapter_dir in each:
            active = contextlib.nullcontext()
            if isinstance(backend, HFBackend):
                name = _adapter_name(backend.loaded, adapter_dir) if adapter_dir else None
                active = backend.loaded.activate(name)  # type: ignore[assignment]
            with active:
                yield evaluate_prepared(backend, prepared, result_cache, run_options, console, groups)
    finally:
        result_cache.close()


def evaluate(
    model: str = EMBEDDED_MODEL,
    tasks: Sequence[str] = (),
    adapter: str | Path | None = None,
    **options: Any,
) -> RunResult:
    """Evaluate a model (with one PEFT adapter over it, if given) on tasks or groups: `harness run` as a function.
    `model` is anything `--model` takes; `options` are evaluate_each's keyword arguments."""
    (result,) = evaluate_each(model, tasks, [adapter] if adapter else [], **options)
    return result


@dataclass(frozen=True)
class TrainedAdapter:
    """A trained adapter folder and its manifest.json (config, loss curves, data report, speed)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def steps(self) -> int:
        return int(self.manifest["steps"])

    @property
    def best_eval_loss(self) -> float | None:
        return self.manifest["best_eval_loss"]


def train(
    data: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    eval_data: str | Path | None = None,
    resume: bool = False,
    tasks_dir: Sequence[Path] = (),
    console: Console | None = None,
    **overrides: Any,
) -> TrainedAdapter:
    """Fine-tune a LoRA / QLoRA adapter into `out`: `harness train` as a function. `config` is a training config
    YAML; `overrides` set its fields (model, quant, max_steps, seed, lr, ...) on top, as the CLI's flags do."""
    from adapters.config import load_train_config
    from adapters.trainer import MANIFEST
    from adapters.trainer import train as train_adapter

    train_config = load_train_config(Path(config) if config else None, overrides)
    for folder in tasks_dir:
        add_search_path(folder)
    path = train_adapter(
        train_config,
        Path(data),
        Path(out),
        eval_path=Path(eval_data) if eval_data else None,
        resume=resume,
        console=console,
    )
    return TrainedAdapter(path, json.loads((path / MANIFEST).read_text(encoding="utf-8")))


def compare(baseline: RunResult | Path, candidate: RunResult | Path, seed: int = 0) -> RunComparison:
    """The paired comparison of two runs (or results.json files): per task and metric the delta, its bootstrap
    interval and p-value, flips and forgetting."""
    runs = [run if isinstance(run, RunResult) else RunResult.read(Path(run)) for run in (baseline, candidate)]
    return compare_runs(runs, seed).comparisons[0]


def gate(comparison: RunComparison, rules: GateRules | Path | str) -> list[RuleOutcome]:
    """Each gate rule's outcome over a comparison (a rules file path or GateRules); a rule naming a task or metric
    the comparison lacks raises HarnessError."""
    return run_gate(rules if isinstance(rules, GateRules) else load_rules(Path(rules)), comparison)


__all__ = [
    "GateRules",
    "Prompting",
    "ServedOptions",
    "TrainedAdapter",
    "compare",
    "evaluate",
    "evaluate_each",
    "gate",
    "train",
]
