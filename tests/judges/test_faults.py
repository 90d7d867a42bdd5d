"""Judge faults from a misbehaving local HTTP server (stdlib, 127.0.0.1): retries happen, final failures and
replies that are no chat completion are recorded per sample and excluded (never scored 0), everything else is
scored, and only successes are cached."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.core.cache import ResultCache
from harness.core.samples import Sample
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


MALFORMED = {"nochoices": ["nochoices"], "errorbody": ["errorbody"], "html": ["html"], "truncated": ["truncated"]}


def judge_everything(
    base_url: str, cache: ResultCache, cases: list[str] | None = None, on_judged: Callable[[], None] | None = None
) -> JudgedTask:
    cases = cases or [*PLANS, "fine"]
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
    samples = [Sample(case, f"Prompt CASE-{case}", ["ref"]) for case in cases]
    return judge(spec, samples, ["an answer"] * len(samples), on_judged)


def test_faults_are_retried_or_recorded_and_the_rest_is_scored(
    fault_server: Callable[..., tuple[str, object]], tmp_path: Path
) -> None:
    base_url, server = fault_server(PLANS, GOOD, hang_seconds=3.0)
    started = time.monotonic()
    progress: list[float] = []
    judged = judge_everything(
        base_url, ResultCache(tmp_path / "cache.sqlite"), on_judged=lambda: progress.append(time.monotonic())
    )
    assert len(progress) == len(PLANS) + 1  # progress counts every judgment, the failed ones too
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


def test_replies_that_are_no_chat_completion_are_errors_per_sample(
    fault_server: Callable[..., tuple[str, object]], tmp_path: Path
) -> None:
    """An empty `choices`, an error object in a 200, an HTML page and JSON cut short each become that sample's error
    with its reason; the run goes on and scores the rest."""
    base_url, _ = fault_server(MALFORMED, GOOD)
    judged = judge_everything(base_url, ResultCache(tmp_path / "cache.sqlite"), [*MALFORMED, "fine"])
    by_case = dict(zip([*MALFORMED, "fine"], judged.sample_judgments, strict=True))
    scores = dict(zip([*MALFORMED, "fine"], judged.sample_scores, strict=True))
    assert "not a chat completion" in by_case["nochoices"]["general"]["error"]
    assert "model overloaded" in by_case["errorbody"]["general"]["error"]
    assert "502 Bad Gateway" in by_case["html"]["general"]["error"]
    assert "ReplyError" in by_case["truncated"]["general"]["error"]
    for case in MALFORMED:
        assert "general.relevance" not in scores[case], case
    assert scores["fine"]["general.relevance"] == 4.0
    relevance = judged.metrics["general.relevance"]
    assert (relevance.n, relevance.n_errors) == (1, 4)


def test_a_rerun_asks_again_for_every_error_and_for_nothing_that_succeeded(
    fault_server: Callable[..., tuple[str, object]], tmp_path: Path
) -> None:
    base_url, server = fault_server(PLANS, GOOD, hang_seconds=3.0)
    cache = ResultCache(tmp_path / "cache.sqlite")
    judge_everything(base_url, cache)
    first_attempts = dict(server.attempts)  # type: ignore[attr-defined]
    rerun = judge_everything(base_url, cache)
    by_case = dict(zip([*PLANS, "fine"], rerun.sample_judgments, strict=True))
    # badjson and missing: a call and its re-ask each; dead: one call (its retries are the SDK's).
    assert rerun.calls == 5
    for case in ("429", "500", "hang", "reset", "default"):  # "fine" is the server's default case
        assert server.attempts[case] == first_attempts[case], case  # type: ignore[attr-defined]
    assert "unparseable" in by_case["badjson"]["general"]["error"]
    assert rerun.sample_scores[-1]["general.relevance"] == 4.0


def test_a_server_that_trickles_bytes_meets_the_timeout_as_a_deadline(
    fault_server: Callable[..., tuple[str, object]], tmp_path: Path
) -> None:
    """httpx's timeout is per read, so a byte every 0.2 s held a judgment for ever: each attempt now has the whole
    timeout (1 s) as its deadline, the SDK retries it twice, and the sample records a timeout."""
    base_url, server = fault_server({"trickle": ["trickle"]}, GOOD)
    started = time.monotonic()
    judged = judge_everything(base_url, ResultCache(tmp_path / "cache.sqlite"), ["trickle", "fine"])
    assert time.monotonic() - started < 15
    assert server.attempts["trickle"] == 3  # type: ignore[attr-defined]
    assert "APITimeoutError" in judged.sample_judgments[0]["general"]["error"]
    assert judged.sample_scores[1]["general.relevance"] == 4.0


def test_an_endpoint_echoing_the_key_leaves_no_key_in_the_stored_error(
    fault_server: Callable[..., tuple[str, object]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-test-0123456789abcdefghij"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    base_url, server = fault_server({"echokey": ["echokey"]}, GOOD)
    judged = judge_everything(base_url, ResultCache(tmp_path / "cache.sqlite"), ["echokey"])
    error = judged.sample_judgments[0]["general"]["error"]
    assert server.auth[0] == f"Bearer {key}"  # type: ignore[attr-defined]
    assert "AuthenticationError" in error and "Incorrect API key provided" in error
    assert key not in error and "[redacted]" in error
