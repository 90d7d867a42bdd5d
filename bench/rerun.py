"""Wall time of `harness run` on every built-in task with an empty cache, then of an identical re-run.

    python bench/rerun.py [--tasks a,b] [--limit N]

Runs the real CLI in subprocesses (model conversion is assumed done: run it once before timing).
Goal (core issue): the identical re-run takes at most 10% of the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILTIN_TASKS = "general_english,factual_qa,plain_english"


def timed_run(tasks: str, limit: int | None, cache_path: Path, out: Path) -> tuple[float, dict]:
    command = [
        sys.executable,
        "-m",
        "harness",
        "run",
        "--tasks",
        tasks,
        "--cache-path",
        str(cache_path),
        "--out",
        str(out),
    ]
    if limit:
        command += ["--limit", str(limit)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    newest = max(out.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    return elapsed, json.loads(newest.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default=BUILTIN_TASKS)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache_path, out = Path(scratch) / "cache.sqlite", Path(scratch) / "runs"
        first, first_record = timed_run(args.tasks, args.limit, cache_path, out)
        again, again_record = timed_run(args.tasks, args.limit, cache_path, out)
    samples = sum(t["n_samples"] for t in first_record["tasks"].values())
    cached = sum(t["n_cached"] for t in again_record["tasks"].values())
    print(f"tasks: {args.tasks}  samples: {samples}")
    print(f"first run:  {first:7.1f} s wall")
    print(f"re-run:     {again:7.1f} s wall  ({cached}/{samples} samples from the cache)")
    print(f"ratio:      {again / first:7.1%}  (goal <= 10%)")


if __name__ == "__main__":
    main()
