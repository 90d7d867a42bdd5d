"""Pairwise judging of two runs on the same prompts, in both orders.

Per item: the verdict for run A against run B from each order; they agree, or the item counts as a tie and an
inconsistency. Per task: win / tie / loss rates of A, position consistency (the share of items whose two
orders agree) and, among the disagreements, how often the first-shown response won (position bias).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel
from rich.console import Console
from rich.progress import Progress

from harness.core.errors import HarnessError
from harness.core.progress import progress as progress_for
from harness.core.record import RunResult
from judges.client import JudgeClient
from judges.parse import parse_pairwise
from judges.prompt import PAIRWISE_SCHEMA, pairwise_messages
from judges.rubric import Rubric

Outcome = Literal["win", "tie", "loss"]


class PairwiseItem(BaseModel):
    id: str
    outcome: Outcome | None  # A's result; None when a judgment failed
    a_first: str | None  # the verdict ("A", "B", "tie") with A's output shown first
    b_first: str | None  # the verdict with B's output shown first (its "A" is run B)
    consistent: bool | None
    error: str | None = None


class PairwiseTask(BaseModel):
    task: str
    n: int
    n_errors: int
    win_rate: float
    tie_rate: float
    loss_rate: float
    position_consistency: float
    first_position_win_share: float | None  # among inconsistent items: how often the first-shown side won
    items: list[PairwiseItem]


class PairwiseResult(BaseModel):
    run_a: str
    run_b: str
    rubric: str
    judge_model: str
    judge_calls: int
    tasks: dict[str, PairwiseTask]


def _as_a(verdict: str, a_shown_first: bool) -> Outcome:
    if verdict == "tie":
        return "tie"
    a_won = (verdict == "A") == a_shown_first
    return "win" if a_won else "loss"


def combine(item_id: str, a_first: str | None, b_first: str | None, error: str | None) -> PairwiseItem:
    """One item's outcome from its two orders: agreement stands, disagreement is a tie."""
    if a_first is None or b_first is None:
        return PairwiseItem(id=item_id, outcome=None, a_first=a_first, b_first=b_first, consistent=None, error=error)
    first, second = _as_a(a_first, True), _as_a(b_first, False)
    consistent = first == second
    return PairwiseItem(
        id=item_id, outcome=first if consistent else "tie", a_first=a_first, b_first=b_first, consistent=consistent
    )


def summarise(task: str, items: Sequence[PairwiseItem]) -> PairwiseTask:
    judged = [item for item in items if item.outcome is not None]
    n = len(judged) or 1
    inconsistent = [item for item in judged if not item.consistent]
    # A disagreement where each order picked the side shown first is a win for position 1 twice.
    first_wins = sum((item.a_first == "A") + (item.b_first == "A") for item in inconsistent)
    first_decided = sum((item.a_first != "tie") + (item.b_first != "tie") for item in inconsistent)
    return PairwiseTask(
        task=task,
        n=len(judged),
        n_errors=len(items) - len(judged),
        win_rate=sum(i.outcome == "win" for i in judged) / n,
        tie_rate=sum(i.outcome == "tie" for i in judged) / n,
        loss_rate=sum(i.outcome == "loss" for i in judged) / n,
        position_consistency=sum(bool(i.consistent) for i in judged) / n,
        first_position_win_share=first_wins / first_decided if first_decided else None,
        items=list(items),
    )


def pairwise_runs(
    run_a: RunResult, run_b: RunResult, rubric: Rubric, client: JudgeClient, console: Console | None = None
) -> PairwiseResult:
    """Judge every generated sample the two runs share (matched by task and id), both orders; progress on
    `console` (stderr by default)."""
    with progress_for(console=console or Console(stderr=True)) as progress:
        return _pairwise_runs(run_a, run_b, rubric, client, progress)


def _pairwise_runs(
    run_a: RunResult, run_b: RunResult, rubric: Rubric, client: JudgeClient, progress: Progress
) -> PairwiseResult:
    calls_before = client.calls
    tasks = {}
    for task_name, task_a in run_a.tasks.items():
        task_b = run_b.tasks.get(task_name)
        if task_b is None or not any(s.output is not None for s in task_a.samples):
            continue
        outputs_b = {s.id: s.output for s in task_b.samples}
        shared = [s for s in task_a.samples if s.output is not None and outputs_b.get(s.id) is not None]
        requests = []
        for sample in shared:
            other = outputs_b[sample.id] or ""
            requests.append((pairwise_messages(rubric, sample.prompt, sample.output or "", other), PAIRWISE_SCHEMA))
            requests.append((pairwise_messages(rubric, sample.prompt, other, sample.output or ""), PAIRWISE_SCHEMA))
        bar = progress.add_task(f"pairwise {task_name}", total=len(requests))
        judgments = client.judge_all(requests, parse_pairwise, functools.partial(progress.advance, bar))
        items = [
            combine(
                sample.id,
                judgments[2 * i].value,
                judgments[2 * i + 1].value,
                judgments[2 * i].error or judgments[2 * i + 1].error,
            )
            for i, sample in enumerate(shared)
        ]
        tasks[task_name] = summarise(task_name, items)
    if not tasks:
        raise HarnessError("the two runs share no generated samples to compare", field="RUN_A RUN_B")
    return PairwiseResult(
        run_a=run_a.run_id,
        run_b=run_b.run_id,
        rubric=rubric.name,
        judge_model=client.endpoint.model,
        judge_calls=client.calls - calls_before,
        tasks=tasks,
    )
