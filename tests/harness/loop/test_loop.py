"""`harness loop` end to end on the real embedded Gemma with the real local judge (started and stopped by the
loop): first run trains and evaluates; an unchanged re-run trains nothing and calls no model; after editing one
training row only training and the tuned evaluation run again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from harness.cli import app

NOTICES = [
    (
        "The council shall suspend vehicular access to the market square.",
        "The council will stop cars entering the square.",
    ),
    (
        "The library will introduce a levy for the late return of items.",
        "The library will charge fines for late returns.",
    ),
    ("The clinic shall administer seasonal influenza vaccinations.", "The clinic will give flu jabs."),
    ("The water utility will suspend the water supply for maintenance.", "The water company will turn off the water."),
    ("The parks department will undertake the felling of diseased trees.", "The parks team will cut down sick trees."),
    ("The transport authority shall withdraw the late evening service.", "The bus company will stop late buses."),
]


@pytest.fixture
def loop_setup(tmp_path: Path) -> dict[str, Path]:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    eval_rows = [
        {
            "id": "a",
            "notice": "The council will replace the radiators in all communal areas.",
            "plain": "The council will put in new radiators.",
        },
        {
            "id": "b",
            "notice": "The clinic will extend its hours of operation on weekdays.",
            "plain": "The clinic will open for longer on weekdays.",
        },
    ]
    (tasks / "rewrite.jsonl").write_text("".join(json.dumps(row) + "\n" for row in eval_rows))
    (tasks / "rewrite.yaml").write_text(
        yaml.safe_dump(
            {
                "kind": "generate",
                "data": "rewrite.jsonl",
                "id_field": "id",
                "chat_template": True,
                "template": "Rewrite this notice in plain English.\n\n{{ notice }}",
                "reference_field": "plain",
                "metrics": ["rouge"],
                "judges": ["general"],
                "generation": {"max_new_tokens": 12, "stop": ["\n"]},
            }
        )
    )
    (tasks / "general.jsonl").write_text(
        '{"text": "The kettle clicked off as the rain began."}\n{"text": "Bicycles are efficient machines."}\n'
    )
    (tasks / "general.yaml").write_text("kind: perplexity\ndata: general.jsonl\nmetrics: [perplexity]\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: tiny\ntasks_dir: tasks\ntasks: [rewrite]\nforgetting: [general]\n"
        "pairwise: {rubric: general, tasks: [rewrite]}\ngate: gate.yaml\n"
    )
    (tmp_path / "gate.yaml").write_text("rules:\n  - {task: rewrite, metric: rouge1, min: 0.0}\n")
    config = tmp_path / "train.yaml"
    config.write_text(
        "max_steps: 2\nbatch_size: 2\npacking: false\nlora_r: 4\neval_fraction: 0.34\n"
        "eval_every: 2\nsave_every: 2\nlearning_rate: 0.001\nwarmup_steps: 0\n"
    )
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": "Rewrite this notice in plain English.", "input": formal, "output": plain})
            + "\n"
            for formal, plain in NOTICES
        )
    )
    return {"suite": suite, "config": config, "data": data, "workdir": tmp_path / "loop"}


def loop(setup: dict[str, Path], *extra: str) -> tuple[str, dict]:
    result = CliRunner().invoke(
        app,
        [
            "loop",
            "--data",
            str(setup["data"]),
            "--suite",
            str(setup["suite"]),
            "--train-config",
            str(setup["config"]),
            "--judge",
            "local",
            "--workdir",
            str(setup["workdir"]),
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (setup["workdir"] / "history.jsonl").read_text().splitlines()]
    return " ".join(result.output.split()), history[-1]


def mlflow_runs(uri: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("harness")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def run_record(workdir: Path, run_id: str) -> dict:
    return json.loads((workdir / "runs" / run_id / "results.json").read_text())


@pytest.mark.slow
def test_loop_trains_reuses_and_retrains_only_what_changed(loop_setup: dict[str, Path]) -> None:
    store = loop_setup["workdir"].parent / "mlruns" / "mlflow.db"
    output, first = loop(loop_setup, "--mlflow", "--tracking-uri", f"sqlite:///{store}")
    assert first["training_steps"] == 2 and first["model_calls"] == 8  # (2 rewrite + 2 text) x base, tuned
    report = Path(first["report"])
    assert {"report.md", "report.html", "comparison.json", "junit.xml"} <= {p.name for p in report.iterdir()}
    assert "report:" in output and "rouge1" in output
    comparison = json.loads((report / "comparison.json").read_text())
    assert comparison["forgetting"] == ["general"]
    assert (
        comparison["comparisons"][0]["pairwise"]["tasks"]["rewrite"]["n"]
        + comparison["comparisons"][0]["pairwise"]["tasks"]["rewrite"]["n_errors"]
        == 2
    )
    assert "Forgetting" in (report / "report.md").read_text()
    assert "training data: " in output and "**Training data:**" in (report / "report.md").read_text()
    log = loop_setup["workdir"] / "judge-server.log"
    assert log.is_file()
    logged = mlflow_runs(f"sqlite:///{store}")  # base, tuned (with its training curve) and the comparison
    assert {first["base_run"], first["tuned_run"]} <= set(logged) and len(logged) == 3
    assert logged[first["tuned_run"]].data.metrics["train/loss"] > 0

    _, second = loop(loop_setup)
    assert second["training_steps"] == 0 and second["model_calls"] == 0
    assert second["adapter"] == first["adapter"]

    lines = loop_setup["data"].read_text().splitlines()
    lines[0] = lines[0].replace("stop cars entering the square", "stop cars from entering the square")
    loop_setup["data"].write_text("\n".join(lines) + "\n")
    _, third = loop(loop_setup)
    assert third["training_steps"] == 2 and third["adapter"] != first["adapter"]
    base = run_record(loop_setup["workdir"], third["base_run"])
    tuned = run_record(loop_setup["workdir"], third["tuned_run"])
    assert all(task["n_cached"] == task["n_samples"] for task in base["tasks"].values())  # base from the cache
    assert all(task["n_cached"] == 0 for task in tuned["tasks"].values())
    assert third["data_fingerprint"] != first["data_fingerprint"]

    history = CliRunner().invoke(app, ["history", "--workdir", str(loop_setup["workdir"])], env={"COLUMNS": "250"})
    assert history.exit_code == 0 and history.output.count("train.jsonl") == 3
    html = (Path(third["report"]) / "report.html").read_text()
    assert "Trend across data versions" in html


def test_the_local_judge_server_is_stopped_by_pid_even_when_the_block_fails(tmp_path: Path) -> None:
    from judges.local_server import local_judge

    pid = None
    with pytest.raises(RuntimeError), local_judge(tmp_path / "server.log") as server:
        pid = server.pid
        assert Path(f"/proc/{pid}").exists() and server.base_url.startswith("http://127.0.0.1:")
        raise RuntimeError("the loop failed")
    assert pid is not None and not Path(f"/proc/{pid}").exists()
