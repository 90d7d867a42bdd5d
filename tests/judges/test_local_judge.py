"""End to end against the real local judge (llama.cpp server + SmolLM2-135M-Instruct) and the real embedded Gemma:
`harness run` with judges, a cached re-run with zero judge calls, pairwise judging of two runs, the API key
appearing in no file the harness writes, a server killed while in use, and a server whose parent is stopped by
SIGTERM or killed with kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.cli import app
from harness.core.errors import HarnessError
from judges.local_server import LocalJudge, answers, local_judge

ROWS = [
    {"id": "france", "question": "Question: What is the capital of France?\nAnswer:", "answer": "Paris"},
    {"id": "spider", "question": "Question: How many legs does a spider have?\nAnswer:", "answer": "eight"},
    {"id": "ocean", "question": "Question: What is the largest ocean?\nAnswer:", "answer": "the Pacific"},
]


def harness(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def run_judged(folder: Path, out: Path, cache: Path, base_url: str, model: str) -> dict:
    printed = harness(
        "run",
        "--tasks",
        "judged",
        "--tasks-dir",
        str(folder),
        "--out",
        str(out),
        "--cache-path",
        str(cache),
        "--judge-base-url",
        base_url,
        "--judge-model",
        model,
    )
    newest = max(out.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text()) | {"path": str(newest), "printed": printed}


@pytest.mark.slow
def test_run_with_judges_then_cached_rerun(
    judge_server: LocalJudge, judged_task: Callable[..., Path], tmp_path: Path
) -> None:
    folder = judged_task(ROWS, ["general", "factual"])
    first = run_judged(folder, tmp_path / "runs", tmp_path / "cache.sqlite", judge_server.base_url, judge_server.model)
    task = first["tasks"]["judged"]
    assert task["judge_calls"] >= 6  # two rubrics x three samples, plus any re-asks
    assert "judge judged 6/6 (100%)" in first["printed"]  # judging's progress (a log line: not a terminal)
    for key in ("general.relevance", "general.coherence", "general.instruction_compliance", "factual.factual_accuracy"):
        metric = task["metrics"][key]
        assert metric["n"] + metric["n_errors"] == 3
    for sample in task["samples"]:
        for rubric, dims in (("general", ("relevance", "coherence")), ("factual", ("factual_accuracy",))):
            judgment = sample["judgments"][rubric]
            scored = [f"{rubric}.{d}" in sample["scores"] for d in dims]
            assert all(scored) != bool(judgment["error"])  # either scored on every dimension, or an error
            assert judgment["error"] or 1 <= sample["scores"][f"{rubric}.{dims[0]}"] <= 5

    again = run_judged(folder, tmp_path / "runs", tmp_path / "cache.sqlite", judge_server.base_url, judge_server.model)
    assert again["tasks"]["judged"]["judge_calls"] == 0
    assert again["tasks"]["judged"]["metrics"] == task["metrics"]


@pytest.mark.slow
def test_pairwise_judging_of_two_runs(
    judge_server: LocalJudge, judged_task: Callable[..., Path], tmp_path: Path
) -> None:
    greedy_folder = judged_task(ROWS, [])
    run_a = run_judged(greedy_folder, tmp_path / "a", tmp_path / "cache.sqlite", "unused", "unused")
    sampled = tmp_path / "sampled"
    sampled.mkdir()
    (sampled / "judged.jsonl").write_text((greedy_folder / "judged.jsonl").read_text())
    spec = yaml.safe_load((greedy_folder / "judged.yaml").read_text())
    spec["generation"] = {"max_new_tokens": 6, "temperature": 1.0, "seed": 3}
    (sampled / "judged.yaml").write_text(yaml.safe_dump(spec))
    run_b = run_judged(sampled, tmp_path / "b", tmp_path / "cache.sqlite", "unused", "unused")
    out = tmp_path / "pairwise.json"
    printed = harness(
        "judge",
        "pairwise",
        run_a["path"],
        run_b["path"],
        "--out",
        str(out),
        "--judge-base-url",
        judge_server.base_url,
        "--judge-model",
        judge_server.model,
        "--cache-path",
        str(tmp_path / "cache.sqlite"),
    )
    result = json.loads(out.read_text())["tasks"]["judged"]
    assert result["n"] + result["n_errors"] == 3
    assert result["win_rate"] + result["tie_rate"] + result["loss_rate"] == pytest.approx(1.0)
    assert 0.0 <= result["position_consistency"] <= 1.0
    assert all(len({item["a_first"], item["b_first"]} - {"A", "B", "tie", None}) == 0 for item in result["items"])
    assert "consistency" in printed
    assert "pairwise judged 6/6 (100%)" in printed  # three items, both orders


def test_the_api_key_is_never_written(
    fault_server: Callable[..., tuple[str, object]],
    judged_task: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "sk-test-RECOGNISABLE-4e1f9c"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    good = json.dumps(
        {name: {"reason": "ok", "score": 3} for name in ("relevance", "coherence", "instruction_compliance")}
    )
    base_url, server = fault_server({}, good)
    folder = judged_task(ROWS[:2], ["general"])
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--tasks",
            "judged",
            "--tasks-dir",
            str(folder),
            "--out",
            str(tmp_path / "runs"),
            "--cache-path",
            str(tmp_path / "cache.sqlite"),
            "--judge-base-url",
            base_url,
            "--judge-model",
            "fault",
        ],
    )
    assert result.exit_code == 0, result.output
    assert server.auth and all(header == f"Bearer {key}" for header in server.auth)  # type: ignore[attr-defined]
    assert key not in result.output
    (results_path,) = (tmp_path / "runs").rglob("results.json")
    reported = CliRunner().invoke(
        app, ["compare", str(results_path), str(results_path), "--out", str(tmp_path / "report")]
    )
    assert reported.exit_code == 0 and key not in reported.output
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {"report.md", "report.html", "comparison.json"} <= {path.name for path in written}
    assert any(path.name == "results.json" for path in written)
    assert any(path.name.startswith("cache.sqlite") for path in written)
    for path in written:
        assert key.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_a_server_killed_in_use_is_an_error_naming_its_log(tmp_path: Path) -> None:
    """kill -9 of the real server inside the block (as a crash of llama.cpp would end it): leaving the block says
    how it ended and where its log is, instead of a run whose every judgment is a connection error."""
    log = tmp_path / "server.log"
    with pytest.raises(HarnessError, match="killed by SIGKILL while in use") as caught, local_judge(log) as server:
        os.kill(server.pid, signal.SIGKILL)
        while answers(server.base_url):  # the socket closes once the process is gone
            time.sleep(0.1)
    assert str(caught.value).startswith(f"{log}: ")


SERVE_UNTIL_STOPPED = """
import sys, time
from pathlib import Path
from judges.local_server import local_judge
with local_judge(Path(sys.argv[1])) as server:
    print(server.pid, flush=True)
    time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_the_server_does_not_outlive_its_parent(stop: signal.Signals, tmp_path: Path) -> None:
    """A real parent process runs the server, then is stopped: by SIGTERM it stops the server itself and exits 143;
    killed with -9, the kernel's parent-death signal ends the server. Either way none is left running."""
    parent = subprocess.Popen(
        [sys.executable, "-c", SERVE_UNTIL_STOPPED, str(tmp_path / "server.log")], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    assert _running(server_pid)
    os.kill(parent.pid, stop)
    assert parent.wait(timeout=60) == (128 + signal.SIGTERM if stop == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(server_pid), "the judge server outlived its parent"
