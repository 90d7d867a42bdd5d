"""Judge throughput against the local llama.cpp server (SmolLM2-135M-Instruct): concurrency 8 vs 1 in one run,
then a cached re-run's number of calls.

    python bench/judge_throughput.py [--items 24]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

from harness.core.cache import ResultCache
from judges.client import JudgeClient, JudgeEndpoint
from judges.local_server import local_judge
from judges.parse import parse_grades
from judges.prompt import grade_messages, grade_schema
from judges.rubric import find_rubric

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "How many legs does a spider have?",
    "What do bees make?",
    "Which planet is called the Red Planet?",
    "What is frozen water called?",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=24)
    args = parser.parse_args()
    rubric = find_rubric("general")
    requests = [
        (grade_messages(rubric, QUESTIONS[i % len(QUESTIONS)], f"Answer number {i}."), grade_schema(rubric))
        for i in range(args.items)
    ]
    parse = functools.partial(parse_grades, rubric=rubric)
    with tempfile.TemporaryDirectory() as scratch, local_judge(Path(scratch) / "server.log") as server:
        rates = {}
        for concurrency in (1, 8):
            endpoint = JudgeEndpoint(model=server.model, base_url=server.base_url, concurrency=concurrency)
            client = JudgeClient(endpoint, ResultCache(Path(scratch) / f"cache-{concurrency}.sqlite"))
            started = time.perf_counter()
            judgments = client.judge_all(requests, parse)
            elapsed = time.perf_counter() - started
            rates[concurrency] = args.items / elapsed
            errors = sum(j.error is not None for j in judgments)
            print(
                f"concurrency {concurrency}: {args.items} items in {elapsed:.1f} s = {rates[concurrency]:.2f} "
                f"items/s ({client.calls} calls, {errors} errors)"
            )
            if concurrency == 8:
                again = JudgeClient(endpoint, ResultCache(Path(scratch) / "cache-8.sqlite"))
                again.judge_all(requests, parse)
                print(f"cached re-run: {again.calls} calls")
        print(f"ratio concurrency 8 / 1: {rates[8] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
