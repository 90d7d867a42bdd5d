"""`harness loop`: a data file becomes a scored report.

data checks -> train, or reuse the adapter whose base + data + config fingerprint matches -> evaluate base (from
the cache when unchanged) and tuned on the suite -> pairwise judge -> compare -> Markdown + HTML + JSON -> gate.
Everything is content-addressed, so an unchanged re-run trains nothing and calls no model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.backends.hf import LoadedModel, ModelOptions, load_model
from harness.backends.hf_backend import HFBackend
from harness.comparison.compare import Comparison, compare_runs
from harness.comparison.gate import RuleOutcome, load_rules, run_gate
from harness.core.cache import ResultCache
from harness.core.data import data_fingerprint
from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_json
from harness.core.record import RunResult, write_atomic
from harness.evaluation.catalog import add_search_path, get_tasks
from harness.evaluation.runner import RunOptions, evaluate, prepare_tasks
from harness.loop.history import read_history, write_history
from harness.loop.suite import Suite

log = logging.getLogger(__name__)


@dataclass
class LoopOptions:
    data: Path
    suite: Suite
    train_config: Any  # adapters.config.TrainConfig
    workdir: Path
    gate: Path | None = None
    judge: str | None = None  # "local" or an OpenAI-compatible base URL
    judge_model: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    batch_size: int = 8
    seed: int = 0


@dataclass
class LoopOutcome:
    report_dir: Path
    comparison: Comparison
    gate: list[RuleOutcome] = field(default_factory=list)
    training_steps: int = 0
    model_calls: int = 0
    judge_calls: int = 0

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.gate)


def adapter_key(options: LoopOptions, base_fingerprint: str) -> str:
    """The adapter's identity: base weights, training data content and every training setting."""
    return hash_json(
        {
            "base": base_fingerprint,
            "data": data_fingerprint(options.data),
            "config": options.train_config.model_dump(mode="json"),
        }
    )


def ensure_adapter(options: LoopOptions, loaded: LoadedModel, console: Console) -> tuple[Path, int]:
    """The adapter for this data and config: reused when it exists, else trained. Returns (dir, steps trained)."""
    from adapters.trainer import MANIFEST, train

    adapter_dir = options.workdir / "adapters" / adapter_key(options, loaded.base_fingerprint)[:16]
    if (adapter_dir / MANIFEST).is_file():
        log.info("adapter reused: %s (same base, data and config)", adapter_dir)
        return adapter_dir, 0
    log.info("training on %s -> %s", options.data, adapter_dir)
    train(options.train_config, options.data, adapter_dir, resume=adapter_dir.exists(), console=console)
    steps = json.loads((adapter_dir / MANIFEST).read_text())["steps"]
    return adapter_dir, int(steps)


@contextlib.contextmanager
def judge_endpoint(options: LoopOptions) -> Iterator[Any]:
    """The judge endpoint for the loop: the local llama.cpp server (started and stopped here), a URL, or none."""
    from judges.client import JudgeEndpoint

    if options.judge is None:
        yield None
    elif options.judge == "local":
        from judges.local_server import local_judge

        with local_judge(options.workdir / "judge-server.log") as server:
            yield server.endpoint()
    else:
        if not options.judge_model:
            raise HarnessError("a judge URL needs --judge-model", field="--judge-model")
        yield JudgeEndpoint(model=options.judge_model, base_url=options.judge, api_key_env=options.judge_api_key_env)


def _write_run(run: RunResult, workdir: Path) -> Path:
    return run.write(workdir / "runs" / run.run_id / "results.json")


def evaluate_base_and_tuned(
    options: LoopOptions, loaded: LoadedModel, adapter_dir: Path, cache: ResultCache, judge: Any, console: Console
) -> tuple[RunResult, RunResult]:
    specs = get_tasks(options.suite.all_tasks)
    prepared = prepare_tasks(specs, options.suite.limit)
    if judge is None and any(spec.judges for spec in specs):
        raise HarnessError("the suite's tasks list judges: pass --judge local or --judge URL", field="--judge")
    if judge is not None:
        judge.check(specs)
    run_options = RunOptions(limit=options.suite.limit, batch_size=options.batch_size, seed=options.seed, judge=judge)
    name = loaded.load_adapter(adapter_dir, "tuned")
    runs = []
    for adapter_name, label in ((None, "base"), (name, "tuned")):
        log.info("evaluating %s", label)
        with loaded.activate(adapter_name):
            runs.append(evaluate(HFBackend(loaded), prepared, cache, run_options, console))
    return runs[0], runs[1]


def _pairwise(
    options: LoopOptions, base: RunResult, tuned: RunResult, client: Any, console: Console
) -> dict[str, Any] | None:
    from judges.pairwise import pairwise_runs
    from judges.rubric import find_rubric

    config = options.suite.pairwise
    if config is None or client is None:
        return None
    keep = set(config.tasks)
    subset = [
        run.model_copy(update={"tasks": {k: v for k, v in run.tasks.items() if k in keep}}) for run in (tuned, base)
    ]
    return pairwise_runs(subset[0], subset[1], find_rubric(config.rubric), client, console).model_dump(mode="json")


def _history_entry(
    options: LoopOptions, outcome: LoopOutcome, base: RunResult, tuned: RunResult, adapter_dir: Path
) -> dict[str, Any]:
    headline = {
        f"{task.task}/{m.metric}": {"baseline": m.baseline, "candidate": m.candidate}
        for task in outcome.comparison.comparisons[0].tasks.values()
        for m in task.metrics
    }
    return {
        "loop_id": outcome.report_dir.name,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "data": str(options.data),
        "data_fingerprint": data_fingerprint(options.data),
        "adapter": str(adapter_dir),
        "training_steps": outcome.training_steps,
        "model_calls": outcome.model_calls,
        "base_run": base.run_id,
        "tuned_run": tuned.run_id,
        "report": str(outcome.report_dir),
        "gate_passed": outcome.passed if outcome.gate else None,
        "headline": headline,
    }


def run_loop(options: LoopOptions, console: Console) -> LoopOutcome:
    from judges.client import JudgeClient
    from judges.scoring import RubricJudge
    from reports.html import render_html
    from reports.junit import render_junit
    from reports.markdown import render_markdown

    if options.suite.tasks_dir:
        add_search_path(options.suite.tasks_dir)
    gate_path = options.gate or options.suite.gate
    rules = load_rules(gate_path) if gate_path else None
    cache = ResultCache(options.workdir / "cache.sqlite")
    loaded = load_model(ModelOptions(name=options.train_config.model))
    adapter_dir, steps = ensure_adapter(options, loaded, console)
    with judge_endpoint(options) as endpoint:
        client = JudgeClient(endpoint, cache) if endpoint else None
        judge = RubricJudge(client, seed=options.seed) if client else None
        base, tuned = evaluate_base_and_tuned(options, loaded, adapter_dir, cache, judge, console)
        pairwise = _pairwise(options, base, tuned, client, console)
    for run in (base, tuned):
        _write_run(run, options.workdir)
    comparison = compare_runs([base, tuned], options.seed, pairwise)
    comparison = comparison.model_copy(update={"forgetting": options.suite.forgetting})
    outcome = LoopOutcome(
        report_dir=options.workdir / "reports" / f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{tuned.run_id[-6:]}",
        comparison=comparison,
        training_steps=steps,
        model_calls=sum(t.n_samples - t.n_cached for run in (base, tuned) for t in run.tasks.values()),
        judge_calls=(client.calls if client else 0),
    )
    outcome.gate = run_gate(rules, comparison.comparisons[0]) if rules else []
    history = [*read_history(options.workdir), _history_entry(options, outcome, base, tuned, adapter_dir)]
    write_atomic(outcome.report_dir / "comparison.json", comparison.model_dump_json(indent=2))
    write_atomic(outcome.report_dir / "report.md", render_markdown(comparison, outcome.gate))
    write_atomic(outcome.report_dir / "report.html", render_html(comparison, outcome.gate, history))
    if outcome.gate:
        write_atomic(outcome.report_dir / "junit.xml", render_junit(outcome.gate))
    write_history(options.workdir, history)
    latest = options.workdir / "reports" / "latest"
    shutil.rmtree(latest, ignore_errors=True)
    shutil.copytree(outcome.report_dir, latest)
    return outcome
