"""The runner: tasks x model -> RunResult. Length-sorted batches, per-sample cache, resume after a kill.

Model outputs (generated text, log-likelihood statistics) are cached by what determines them: the model's
fingerprint, the exact model input and the decoding or windowing settings. Metrics are pure and cheap, so they
are recomputed from those outputs on every run.
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from typing import Any, Protocol, TypeVar

from rich.console import Console
from rich.progress import Progress

from harness.backends import distributed
from harness.backends.protocol import Backend, ContinuationScore, Prompt, RequestError, check_tasks
from harness.core.cache import ResultCache
from harness.core.progress import progress as progress_for
from harness.core.record import (
    ChoiceRecord,
    MetricValue,
    RunResult,
    RunSpec,
    SampleRecord,
    TaskResult,
    TaskRunSpec,
)
from harness.core.registry import ChoiceStats, SampleStats
from harness.core.samples import Sample, load_samples
from harness.core.taskspec import GroupSpec, TaskSpec
from harness.evaluation.aggregate import group_results, metric_values
from harness.metrics import get_metric
from harness.metrics.tasks import task_metrics

log = logging.getLogger(__name__)
B = TypeVar("B")  # a batch, as pipelined() hands it to its callbacks
R = TypeVar("R")  # a batch's results
LOGLIKELIHOOD_KINDS = ("multiple_choice", "loglikelihood")  # tasks scored by continuation log-likelihoods


@dataclass(frozen=True)
class RunOptions:
    limit: int | None = None
    batch_size: int = 8
    seed: int = 0
    bootstrap_resamples: int = 1000
    judge: TaskJudge | None = None


@dataclass
class JudgedTask:
    """What a judge adds to a task's results: per-sample scores and judgments, and corpus values."""

    sample_scores: list[dict[str, float]]
    sample_judgments: list[dict[str, Any]]
    metrics: dict[str, MetricValue]
    calls: int


class TaskJudge(Protocol):
    """Scores generated outputs with the task's judges (implemented in `judges/`)."""

    def __call__(
        self,
        spec: TaskSpec,
        samples: Sequence[Sample],
        predictions: Sequence[str],
        on_judged: Callable[[], None] | None = None,
    ) -> JudgedTask:
        """Judge each prediction; `on_judged` is called as each judgment (or its failure) comes in."""
        ...


@dataclass(frozen=True)
class PreparedTask:
    """A task with its data loaded and checked, before any model work starts."""

    spec: TaskSpec
    samples: list[Sample]
    data_fingerprint: str
    data_revision: str | None = None  # a hub dataset's commit

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint(self.data_fingerprint)

    @property
    def unconditional(self) -> bool:
        """Whether a metric also needs each choice's log-likelihood with no context (acc_mutual_info)."""
        return any(get_metric(m.name, self.spec.kind).needs_unconditional for m in self.spec.metrics)


def prepare_tasks(specs: Sequence[TaskSpec], limit: int | None) -> list[PreparedTask]:
    """Load every task's data up front so bad input fails before the model loads and before anything is written."""
    prepared = []
    for spec in specs:
        samples, rows = load_samples(spec)
        log.debug("%s: %d samples from %s (data %s)", spec.name, len(samples), spec.data_label, rows.fingerprint[:12])
        prepared.append(PreparedTask(spec, samples[:limit] if limit else samples, rows.fingerprint, rows.revision))
    return prepared


ModelRequest = str | list[tuple[str, str]]  # a prompt or text to score, or (context, continuation) pairs


def _prompt(task: PreparedTask, sample: Sample) -> Prompt:
    """A sample's prompt; under `chat_template` (never for perplexity) one user turn after the system turn."""
    chat = task.spec.kind != "perplexity" and task.spec.chat_template
    return Prompt(sample.prompt, sample.system if chat else None, chat)


def _model_request(task: PreparedTask, sample: Sample, model_input: str) -> ModelRequest:
    """What the model is asked for a sample: its input text, or for a log-likelihood task the scored pairs (the
    choices, then with acc_mutual_info each choice's continuation after no context)."""
    if task.spec.kind not in LOGLIKELIHOOD_KINDS:
        return model_input
    pairs = sample.scored_pairs(task.spec.target_delimiter, context=model_input)
    return pairs + [("", continuation) for _, continuation in pairs] if task.unconditional else pairs


def _request_size(request: ModelRequest) -> int:
    return len(request) if isinstance(request, str) else sum(len(a) + len(b) for a, b in request)


def _cache_key(backend: Backend, task: PreparedTask, model_input: ModelRequest) -> str:
    spec = task.spec
    settings = {
        "generate": spec.generation.model_dump(),
        "perplexity": spec.perplexity.identity(),
    }.get(spec.kind, {})
    return ResultCache.key(
        model=backend.fingerprint,
        kind=spec.kind,
        input=model_input,
        settings=settings,
        chat=spec.chat_template,
    )


def _continuation_scores(
    backend: Backend, requests: list[list[tuple[str, str]]], batch_size: int, unconditional: bool
) -> list[dict[str, Any]]:
    """Per sample: each choice's log-probability, token count and greedy flag (and unconditional log-probability);
    a sample any of whose requests failed gets that error."""
    scores = backend.loglikelihood([pair for request in requests for pair in request], batch_size)
    results: list[dict[str, Any]] = []
    start = 0
    for request in requests:
        part, start = scores[start : start + len(request)], start + len(request)
        failed = next((s for s in part if isinstance(s, RequestError)), None)
        if failed is not None:
            results.append({"error": failed.reason})
            continue
        ok = [s for s in part if isinstance(s, ContinuationScore)]
        n_choices = len(request) // 2 if unconditional else len(request)
        result = {
            "logprob": [s.logprob for s in ok[:n_choices]],
            "tokens": [s.tokens for s in ok[:n_choices]],
            "greedy": [s.greedy for s in ok[:n_choices]],
        }
        results.append(result | ({"unconditional": [s.logprob for s in ok[n_choices:]]} if unconditional else {}))
    return results


def _launch_batch(
    backend: Backend, task: PreparedTask, prompts: list[Prompt], requests: list[Any], batch_size: int
) -> Callable[[], list[dict[str, Any]]]:
    """Start one batch and return a function that gives its results: generation finishes here, while a GPU's
    perplexity is only queued on the device and read back when the results are asked for."""
    spec = task.spec
    if spec.kind in LOGLIKELIHOOD_KINDS:
        results = _continuation_scores(backend, requests, batch_size, task.unconditional)
        return lambda: results
    if spec.kind == "generate":
        outputs = backend.generate(prompts, spec.generation)
        return lambda: [{"error": o.reason} if isinstance(o, RequestError) else {"output": o} for o in outputs]
    windows = spec.perplexity
    pending = backend.loglikelihood_rolling(
        requests, windows.max_length, windows.stride, batch_size, windows=windows.windows
    )
    return lambda: [
        {"error": s.reason} if isinstance(s, RequestError) else {"nll": s.nll, "tokens": s.tokens, "bytes": s.bytes}
        for s in pending()
    ]


def pipelined(
    batches: Sequence[B],
    launch: Callable[[B], Callable[[], R]],
    store: Callable[[B, R], None],
    in_flight: int,
) -> None:
    """Launch each batch and store its results, keeping up to `in_flight` launched batches unstored: the next batch
    is queued on the device before the previous one's results are read back. On any failure, every batch already
    launched is still stored."""
    queue: deque[tuple[B, Callable[[], R]]] = deque()

    def drain(keep: int) -> None:
        while len(queue) > keep:
            batch, results = queue.popleft()
            store(batch, results())

    try:
        for batch in batches:
            queue.append((batch, launch(batch)))
            drain(in_flight)
    finally:
        drain(0)


def _model_outputs(
    backend: Backend, task: PreparedTask, cache: ResultCache, options: RunOptions, progress: Progress
) -> tuple[list[str], list[dict[str, Any]], set[int]]:
    """Model inputs, outputs and the indices served from the cache, computing only what the cache lacks. A failed
    request's output is {"error": reason}, never cached: the next run asks again."""
    prompts = [_prompt(task, sample) for sample in task.samples]
    inputs = [backend.model_input(prompt) for prompt in prompts]
    requests = [_model_request(task, sample, text) for sample, text in zip(task.samples, inputs, strict=True)]
    keys = [_cache_key(backend, task, request) for request in requests]
    found = cache.get_many(keys)
    cached = {i for i, key in enumerate(keys) if key in found}
    bar = progress.add_task(task.spec.name, total=len(inputs), completed=len(cached))
    pending = sorted((i for i in range(len(inputs)) if i not in cached), key=lambda i: -_request_size(requests[i]))
    mine = distributed.shard(pending)  # under a launcher each rank takes its share; all ranks get every result
    log.debug(
        "%s: %d samples, %d from the cache, %d to compute in batches of %d (fingerprint %s)",
        task.spec.name, len(inputs), len(cached), len(pending), backend.batch_size(options.batch_size),
        task.fingerprint[:12],
    )  # fmt: skip
    computed: dict[str, Any] = {}

    def store(batch: list[int], results: list[dict[str, Any]]) -> None:
        fresh = {keys[i]: result for i, result in zip(batch, results, strict=True)}
        cache.put_many({key: result for key, result in fresh.items() if "error" not in result})
        computed.update(fresh)
        progress.advance(bar, len(batch) * distributed.world_size())

    # Perplexity keeps one batch in flight (host and device work overlap); generation caches each batch as it comes.
    size = backend.batch_size(options.batch_size)
    batches = [mine[start : start + size] for start in range(0, len(mine), size)]
    pipelined(
        batches,
        lambda batch: _launch_batch(
            backend, task, [prompts[i] for i in batch], [requests[i] for i in batch], options.batch_size
        ),
        store,
        in_flight=1 if task.spec.kind == "perplexity" else 0,
    )
    found.update(distributed.gather_dicts(computed))
    return inputs, [found[key] for key in keys], cached


def _choice_stats(sample: Sample, output: dict[str, Any]) -> list[ChoiceStats]:
    """A log-likelihood sample's per-choice statistics from its model output (none for other kinds)."""
    if "logprob" not in output:
        return []
    unconditional = output.get("unconditional") or [None] * len(sample.choices)
    return [
        ChoiceStats(logprob, tokens, len(text), greedy, free)
        for text, logprob, tokens, greedy, free in zip(
            sample.choices, output["logprob"], output["tokens"], output["greedy"], unconditional, strict=True
        )
    ]


def _score_task(
    task: PreparedTask,
    inputs: list[str],
    outputs: list[dict[str, Any]],
    cached: set[int],
    options: RunOptions,
    progress: Progress,
) -> TaskResult:
    """Per-sample scores and corpus metrics; a sample whose request failed is recorded with its error and left out
    of the metrics (and of judging)."""
    spec = task.spec
    ok = [i for i, out in enumerate(outputs) if "error" not in out]
    samples = [task.samples[i] for i in ok]
    stats = [SampleStats(out["nll"], out["tokens"], out["bytes"]) if "nll" in out else None for out in outputs]
    choices = [_choice_stats(sample, out) for sample, out in zip(task.samples, outputs, strict=True)]
    predictions = [out.get("output", "") for out in outputs]
    if spec.kind == "multiple_choice":  # the most likely choice stands as the output
        predictions = [
            s.choices[max(range(len(c)), key=lambda j: (c[j].logprob, -j))] if c else ""
            for s, c in zip(task.samples, choices, strict=True)
        ]
    scorers = task_metrics(spec.kind, spec.metrics, spec.filters)
    records = []
    for i, sample in enumerate(task.samples):
        scores: dict[str, float] = {}
        for scorer in scorers if "error" not in outputs[i] else []:
            scores.update(
                scorer.definition.score(
                    scorer.options, predictions[i], sample.references, stats[i], choices[i], sample.gold
                )
            )
        records.append(
            SampleRecord(
                id=sample.id,
                prompt=inputs[i],
                output=predictions[i] if spec.kind in ("generate", "multiple_choice") and i in ok else None,
                references=sample.references,
                choices=[
                    ChoiceRecord(text=text, **vars(c)) for text, c in zip(sample.choices, choices[i], strict=True)
                ],
                gold=list(sample.gold),
                scores=scores,
                cached=i in cached,
                error=outputs[i].get("error"),
            )
        )
    scored = [records[i] for i in ok]
    ok_predictions = [predictions[i] for i in ok]
    references = [sample.references for sample in samples]
    metrics: dict[str, MetricValue] = {}
    for scorer in scorers if scored else []:
        rows = scorer.definition.sufficient_stats(
            scorer.options, [r.scores for r in scored], ok_predictions, references
        )
        metrics.update(metric_values(scorer, rows, ok_predictions, references, options))
    judge_calls = 0
    if spec.judges and options.judge is not None and distributed.is_main() and scored:
        bar = progress.add_task(f"judge {spec.name}", total=len(scored) * len(spec.judges))
        judged = options.judge(spec, samples, ok_predictions, lambda: progress.advance(bar))
        for record, scores, judgments in zip(scored, judged.sample_scores, judged.sample_judgments, strict=True):
            record.scores.update(scores)
            record.judgments.update(judgments)
        metrics.update(judged.metrics)
        judge_calls = judged.calls
    return TaskResult(
        task=spec.name,
        n_samples=len(records),
        n_cached=len(cached),
        n_errors=len(records) - len(scored),
        judge_calls=judge_calls,
        metrics=metrics,
        samples=records,
    )


def _git_sha() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def _run_spec(backend: Backend, tasks: Sequence[PreparedTask], options: RunOptions) -> RunSpec:
    task_specs = [
        TaskRunSpec(
            name=t.spec.name,
            version=t.spec.version,
            kind=t.spec.kind,
            fingerprint=t.fingerprint,
            data_fingerprint=t.data_fingerprint,
            data_path=t.spec.data_label,
            data_revision=t.data_revision,
            config=t.spec.model_dump(mode="json", exclude={"data", "description"}),
        )
        for t in tasks
    ]
    return RunSpec(
        model=backend.describe(),
        tasks=task_specs,
        limit=options.limit,
        seed=options.seed,
        harness_version=version("harness"),
        world_size=distributed.world_size(),
        git_sha=_git_sha(),
    )


def evaluate(
    backend: Backend,
    tasks: Sequence[PreparedTask],
    cache: ResultCache,
    options: RunOptions,
    console: Console | None = None,
    groups: Sequence[GroupSpec] = (),
) -> RunResult:
    """Evaluate the model (with its active adapter, if any) on prepared tasks; nothing is written here but the
    cache."""
    check_tasks(backend, [task.spec for task in tasks])
    started = time.perf_counter()
    results = {}
    with progress_for(console=console or Console(stderr=True), disable=not distributed.is_main()) as progress:
        for task in tasks:
            inputs, outputs, cached = _model_outputs(backend, task, cache, options, progress)
            results[task.spec.name] = _score_task(task, inputs, outputs, cached, options, progress)
    created_at = datetime.now(timezone.utc)
    return RunResult(
        run_id=f"{created_at:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
        created_at=created_at,
        spec=_run_spec(backend, tasks, options),
        wall_seconds=time.perf_counter() - started,
        tasks=results,
        groups=group_results(groups, {t.spec.name: t.spec for t in tasks}, results, options),
    )
