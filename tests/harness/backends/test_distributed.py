"""Data parallelism on the CPU: 2 processes under torchrun with the gloo backend, against 1 process.

Evaluation: the gathered RunResult equals the single-process one (greedy outputs identical, perplexity within
1e-5). Training: 2 processes give the same losses as 1 with the same global batch, and a run checkpointed by 2
processes resumes in 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from judges.local_server import free_port

QA = [
    {"id": f"q{i}", "question": q, "answer": a}
    for i, (q, a) in enumerate(
        [
            ("What is the capital of France?", "Paris"),
            ("What is the capital of Japan?", "Tokyo"),
            ("How many legs does a spider have?", "eight"),
            ("What do bees make?", "honey"),
            ("What is frozen water?", "ice"),
        ]
    )
]
TEXTS = [
    {"id": f"t{i}", "text": t}
    for i, t in enumerate(
        [
            "The library opened at nine.",
            "Glaciers move slowly but relentlessly across the valley floor.",
            "Tides are caused mainly by the moon.",
            "A good recipe for bread needs flour, water, salt and yeast.",
            "Maps are always simplifications.",
        ]
    )
]


def launch(args: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(free_port()),
            "-m",
            "harness",
        ]
        if processes > 1
        else [sys.executable, "-m", "harness"]
    )
    completed = subprocess.run(prefix + args, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(task_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    task_dir(
        "qa",
        QA,
        kind="generate",
        template="Question: {{ question }}\nAnswer:",
        reference_field="answer",
        id_field="id",
        metrics=["exact_match"],
        generation={"max_new_tokens": 5, "stop": ["\n"]},
    )
    folder = task_dir("text", TEXTS, kind="perplexity", id_field="id", metrics=["perplexity"])
    records = {}
    for processes in (1, 2):
        out = tmp_path / f"runs-{processes}"
        launch(
            [
                "run",
                "--tasks",
                "qa,text",
                "--tasks-dir",
                str(folder),
                "--out",
                str(out),
                "--cache-path",
                str(tmp_path / f"cache-{processes}.sqlite"),
                "--batch-size",
                "2",
            ],
            processes,
        )
        (path,) = out.rglob("results.json")  # one record, written by rank 0
        record = json.loads(path.read_text())
        assert record["spec"]["world_size"] == processes
        records[processes] = record["tasks"]
    single, double = records[1], records[2]
    assert [s["output"] for s in double["qa"]["samples"]] == [s["output"] for s in single["qa"]["samples"]]
    assert double["qa"]["metrics"]["exact_match"]["value"] == single["qa"]["metrics"]["exact_match"]["value"]
    for a, b in zip(single["text"]["samples"], double["text"]["samples"], strict=True):
        assert a["id"] == b["id"] and b["scores"]["nll"] == pytest.approx(a["scores"]["nll"], rel=1e-5)
    assert double["text"]["metrics"]["perplexity"]["value"] == pytest.approx(
        single["text"]["metrics"]["perplexity"]["value"], rel=1e-5
    )


@pytest.mark.slow
def test_two_process_training_matches_one_and_resumes_in_one(tmp_path: Path) -> None:
    rows = [
        {"instruction": f"Write the number {i} in words.", "output": w}
        for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven"])
    ]
    data = tmp_path / "numbers.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "train.yaml"
    config.write_text(
        "quant: none\nmax_steps: 4\nbatch_size: 1\ngrad_accum: 2\npacking: false\nlora_dropout: 0\n"
        "lora_r: 4\neval_fraction: 0.25\neval_every: 2\nsave_every: 2\nlearning_rate: 0.001\n"
        "warmup_steps: 0\n"
    )
    manifests = {}
    for processes in (1, 2):
        launch(
            ["train", "--data", str(data), "--config", str(config), "--out", str(tmp_path / f"a{processes}")], processes
        )
        manifests[processes] = json.loads((tmp_path / f"a{processes}" / "manifest.json").read_text())
    one, two = manifests[1], manifests[2]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for a, b in zip(one["loss_curve"], two["loss_curve"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4) and b["tokens"] == a["tokens"]
    assert two["best_eval_loss"] == pytest.approx(one["best_eval_loss"], abs=1e-4)

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "a2", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    (resumed / "manifest.json").unlink()
    launch(["train", "--data", str(data), "--config", str(config), "--out", str(resumed), "--resume"], 1)
    after = json.loads((resumed / "manifest.json").read_text())
    assert after["loss_curve"][-1]["loss"] == pytest.approx(one["loss_curve"][-1]["loss"], abs=1e-4)
