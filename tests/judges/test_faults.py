"""Judge faults from a misbehaving local HTTP server (stdlib, 127.0.0.1): retries happen, final failures are
recorded per sample and excluded (never scored 0), and everything else is scored."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from harness.core.cache import ResultCache
from harness.core.data import Sample
from harness.core.taskspec import TaskSpec
from harness.evaluation.runner import JudgedTask
from judges.client import JudgeClient, JudgeEndpoint
from judges.scoring import RubricJudge

GOOD = json.dumps(
    {name: {"reason": "fine", "score": 4} for name in ("relevance", "coherence", "instruction_compliance")}
)
PLANS = {
    "429": ["429", "ok"],
    "500": ["500", "ok"],
    "hang": ["hang", "ok"],
    "reset": ["reset", "ok"],
    "badjson": ["badjson"],
    "missing": ["missing"],
    "dead": ["500"],
}


def judge_everything(base_url: str, cache: ResultCache) -> JudgedTask:
    endpoint = JudgeEndpoint(
        model="fault", base_url=base_url, timeout=1.0, max_retries=2, concurrency=4, logprobs=False
    )
    judge = RubricJudge(JudgeClient(endpoint, cache))
    spec = TaskSpec.model_validate(
        {
            "name": "t",
            "kind": "generate",
            "data": "unused.jsonl",
            "reference_field": "a",
            "metrics": ["exact_match"],
            "judges": ["general"],
        }
    )
    samples = [Sample(case, f"Prompt CASE-{case}", ["ref"]) for case in [*PLANS, "fine"]]
    return judge(spec, samples, ["an answer"] * len(samples))


def test_faults_are_retried_or_recorded_and_the_rest_is_scored(
    fault_server: Callable[..., tuple[str, object]], tmp_path: Path
) -> None:
    base_url, server = fault_server(PLANS, GOOD, hang_seconds=3.0)
    started = time.monotonic()
    judged = judge_everything(base_url, ResultCache(tmp_path / "cache.sqlite"))
    by_case = dict(zip([*PLANS, "fine"], judged.sample_judgments, strict=True))
    scores = dict(zip([*PLANS, "fine"], judged.sample_scores, strict=True))
    attempts = server.attempts  # type: ignore[attr-defined]

    for case in ("429", "500", "hang", "reset", "fine"):
        assert scores[case]["general.relevance"] == 4.0, case
        assert by_case[case]["general"]["error"] is None
    assert attempts["429"] == 2 and attempts["500"] == 2 and attempts["hang"] == 2 and attempts["reset"] == 2
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured

    assert attempts["badjson"] == 2  # one re-ask, then give up
    assert "unparseable after a re-ask" in by_case["badjson"]["general"]["error"]
    assert by_case["badjson"]["general"]["raw"] == "this is {not json"
    assert "dimension 'relevance': Field required" in by_case["missing"]["general"]["error"]
    assert attempts["dead"] == 3  # the first try and max_retries=2 retries
    assert "InternalServerError" in by_case["dead"]["general"]["error"]
    for case in ("badjson", "missing", "dead"):
        assert "general.relevance" not in scores[case]  # excluded, not scored 0

    relevance = judged.metrics["general.relevance"]
    assert (relevance.n, relevance.n_errors, relevance.value) == (5, 3, 4.0)


def test_a_rerun_calls_only_for_what_failed_in_transit(
    fault_server: Callable[..., tuple[str, object]], tmp_path: Path
) -> None:
    base_url, _ = fault_server(PLANS, GOOD, hang_seconds=3.0)
    cache = ResultCache(tmp_path / "cache.sqlite")
    judge_everything(base_url, cache)
    rerun = judge_everything(base_url, cache)
    # Only "dead" is asked again: a 5xx after retries is not cached; parse failures are final and cached.
    assert rerun.calls == 1
    assert "unparseable" in rerun.sample_judgments[4]["general"]["error"]
