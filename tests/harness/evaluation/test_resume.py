"""A real `harness run` subprocess killed with SIGKILL mid-run, then re-run: nothing finished is recomputed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

PASSAGES = [f"Passage number {i} talks about rivers, bridges and the towns that grew beside them." for i in range(12)]


def cached_rows(cache_path: Path) -> int:
    if not cache_path.exists():
        return 0
    try:
        with sqlite3.connect(cache_path, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0


def harness_run(folder: Path, out: Path, cache_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "run",
        "--tasks",
        "passages",
        "--tasks-dir",
        str(folder),
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--cache-path",
        str(cache_path),
    ]


@pytest.mark.slow
def test_kill_9_then_rerun_recomputes_nothing_finished(task_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = task_dir("passages", [{"text": t} for t in PASSAGES], kind="perplexity", metrics=["perplexity"])
    cache_path, out = tmp_path / "cache.sqlite", tmp_path / "runs"
    victim = subprocess.Popen(
        harness_run(folder, out, cache_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while cached_rows(cache_path) < 3 and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    finished_before_kill = cached_rows(cache_path)
    assert 3 <= finished_before_kill < len(PASSAGES), "the kill must land mid-run"
    assert not out.exists() or not list(out.rglob("results.json")), "a killed run writes no record"

    subprocess.run(harness_run(folder, out, cache_path), check=True, capture_output=True)
    (results_path,) = out.rglob("results.json")
    task = json.loads(results_path.read_text())["tasks"]["passages"]
    assert task["n_cached"] == finished_before_kill
    assert task["n_samples"] == len(PASSAGES)
    assert cached_rows(cache_path) == len(PASSAGES)
