"""MLflow logging against a real local MLflow store (SQLite and an artifact folder, as MLflow 3 keeps a local
store): runs with their metrics, training curves and results.json, and comparisons with the gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.core.record import RunResult

TRAINING = {  # an adapter manifest's curves, as adapters.trainer writes them
    "loss_curve": [{"step": 1, "loss": 2.5, "lr": 1e-4, "tokens": 64}, {"step": 2, "loss": 2.1, "lr": 5e-5}],
    "eval_curve": [{"step": 0, "eval_loss": 2.7}, {"step": 2, "eval_loss": 2.2}],
}


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs_by_name(uri: str) -> dict[str, object]:
    client = _client(uri)
    experiment = client.get_experiment_by_name("harness")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_runs_and_a_comparison_are_logged_with_metrics_curves_and_artifacts(
    real_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned = RunResult.read(real_runs["regressed"])
    model = tuned.spec.model.model_copy(update={"adapter_path": "adapters/tuned", "training": TRAINING})
    tuned = tuned.model_copy(update={"spec": tuned.spec.model_copy(update={"model": model})})
    tuned_path = tuned.write(tmp_path / "tuned" / "results.json")
    report = tmp_path / "report"
    compared = CliRunner().invoke(app, ["compare", str(real_runs["greedy"]), str(tuned_path), "--out", str(report)])
    assert compared.exit_code == 0, compared.output

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        app, ["export", "mlflow", str(real_runs["greedy"]), str(tuned_path), "--comparison", str(report)]
    )
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # the default: a local store in ./mlruns
    assert f"at {uri}" in " ".join(result.output.split())

    runs = _runs_by_name(uri)
    greedy = RunResult.read(real_runs["greedy"])
    logged = runs[greedy.run_id].data  # type: ignore[attr-defined]
    for task, task_result in greedy.tasks.items():
        for name, metric in task_result.metrics.items():
            assert logged.metrics[f"{task}/{name}"] == pytest.approx(metric.value)
    assert logged.tags["harness.model_fingerprint"] == greedy.spec.model.fingerprint
    assert logged.params["task.factual_qa"].startswith("generate v")

    client = _client(uri)
    tuned_id = runs[tuned.run_id].info.run_id  # type: ignore[attr-defined]
    history = client.get_metric_history(tuned_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.1)]
    assert [m.step for m in client.get_metric_history(tuned_id, "eval/loss")] == [0, 2]
    assert "results.json" in {f.path for f in client.list_artifacts(tuned_id)}
    assert (tmp_path / "mlruns" / "artifacts").is_dir()  # artifacts beside the database, not in the working folder

    (comparison_run,) = [r for name, r in runs.items() if " vs " in name]
    metrics = comparison_run.data.metrics  # type: ignore[attr-defined]
    assert metrics["factual_qa/exact_match/baseline"] == pytest.approx(
        greedy.tasks["factual_qa"].metrics["exact_match"].value
    )
    assert "factual_qa/exact_match/delta" in metrics
    artifacts = {f.path for f in client.list_artifacts(comparison_run.info.run_id)}  # type: ignore[attr-defined]
    assert {"comparison.json", "report.md", "report.html"} <= artifacts


def test_a_gate_logs_its_outcome(real_runs: dict[str, Path], tmp_path: Path) -> None:
    rules = tmp_path / "gate.yaml"
    rules.write_text("rules:\n  - {task: plain_english, metric: chrf, max_drop: 5.0}\n")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    command = ["gate", "--baseline", str(real_runs["greedy"]), "--candidate", str(real_runs["regressed"])]
    command += ["--rules", str(rules), "--out", str(tmp_path / "report"), "--mlflow", "--tracking-uri", uri]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output  # the planted regression fails the gate
    (run,) = _runs_by_name(uri).values()
    assert run.data.tags["harness.gate"] == "failed"  # type: ignore[attr-defined]
    assert run.data.metrics["gate/failed_rules"] >= 1  # type: ignore[attr-defined]


def test_without_the_extra_the_error_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    from reports.mlflow_export import export_run

    with pytest.raises(Exception, match=r"needs the mlflow extra.*pip install 'harness\[mlflow\]'"):
        export_run(RunResult.model_construct(), f"sqlite:///{tmp_path / 'x.db'}")
