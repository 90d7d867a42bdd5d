"""Log runs and comparisons to MLflow (optional extra `[mlflow]`), like the Opik export.

- A RunResult becomes one MLflow run named by its run id: the model, adapter and task fingerprints as tags and
  params, every task metric as `<task>/<metric>` (with its CI bounds and stderr where known), the adapter's training
  curves (`train/loss`, `train/lr`, `eval/loss` by step) when the run's model came from training, and results.json
  as an artifact.
- A Comparison becomes one run per baseline/candidate pair: `<task>/<metric>/{baseline,candidate,delta,p_value}`,
  the gate's outcome as a tag and metric, and the report files as artifacts.

The tracking URI is the one given, else MLFLOW_TRACKING_URI, else a local store in ./mlruns (SQLite, as MLflow 3
asks of a local store, with the artifacts beside it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.comparison.compare import Comparison, RunComparison
from harness.comparison.gate import RuleOutcome
from harness.core.errors import HarnessError
from harness.core.record import RunResult

DEFAULT_EXPERIMENT = "harness"
LOCAL_STORE = Path("mlruns")


def tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to log to: `uri`, MLFLOW_TRACKING_URI, or the local ./mlruns store."""
    if uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return uri or os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


def _local_store(uri: str) -> Path | None:
    """The database file of a local SQLite store, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def metric_key(*parts: str) -> str:
    """An MLflow metric name: letters, digits and `_-. /` only (a judge's `judge:x` becomes `judge_x`)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. ]", "_", part) for part in parts)


def _client(uri: str | None) -> tuple[Any, str]:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise HarnessError(
            "MLflow logging needs the mlflow extra", field="--mlflow", hint="pip install 'harness[mlflow]'"
        ) from None
    resolved = tracking_uri(uri)
    store = _local_store(resolved)
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=resolved), resolved


def _experiment_id(client: Any, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    store = _local_store(uri)  # a local store keeps its artifacts beside its database, not in the working folder
    artifacts = (store.parent / "artifacts").as_uri() if store is not None else None
    return str(client.create_experiment(name, artifact_location=artifacts))


def _log(client: Any, run_id: str, metrics: Iterable[tuple[str, float, int]], params: dict[str, Any]) -> None:
    from mlflow.entities import Metric, Param

    entries = [Metric(key, float(value), 0, step) for key, value, step in metrics if value == value]  # no NaN
    for start in range(0, len(entries), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=entries[start : start + 1000])
    if params:
        client.log_batch(run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()])


def _run_metrics(run: RunResult) -> list[tuple[str, float, int]]:
    rows = []
    for task_name, task in run.tasks.items():
        for name, metric in task.metrics.items():
            rows.append((metric_key(task_name, name), metric.value, 0))
            for bound in ("ci_low", "ci_high", "stderr"):
                value = getattr(metric, bound)
                if value is not None:
                    rows.append((metric_key(task_name, name, bound), value, 0))
        rows.append((metric_key(task_name, "n_errors"), float(task.n_errors), 0))
    return rows


def _training_metrics(training: dict[str, Any]) -> list[tuple[str, float, int]]:
    rows = [
        (f"train/{key}", point[key], point["step"])
        for point in training.get("loss_curve", [])
        for key in ("loss", "lr")
        if key in point
    ]
    rows += [("eval/loss", point["eval_loss"], point["step"]) for point in training.get("eval_curve", [])]
    return rows


def export_run(
    run: RunResult, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, results_path: Path | None = None
) -> str:
    """Log one run; returns the MLflow run id."""
    client, resolved = _client(uri)
    model = run.spec.model
    tags = {
        "harness.run_id": run.run_id,
        "harness.model": model.name,
        "harness.model_fingerprint": model.fingerprint,
        "harness.backend": model.backend,
        "harness.adapter": model.adapter_path or "",
        "harness.version": run.spec.harness_version,
        "mlflow.source.git.commit": run.spec.git_sha or "",
    }
    mlflow_run = client.create_run(_experiment_id(client, experiment, resolved), run_name=run.run_id, tags=tags)
    run_id = mlflow_run.info.run_id
    params: dict[str, Any] = {
        "model": model.name,
        "checkpoint": model.checkpoint,
        "seed": run.spec.seed,
        "limit": run.spec.limit,
    }
    params |= {
        f"task.{t.name}": f"{t.kind} v{t.version} {t.fingerprint[:12]} data {t.data_fingerprint[:12]}"
        for t in run.spec.tasks
    }
    if model.adapter_path:
        params |= {"adapter": model.adapter_path, "adapter_fingerprint": model.adapter_fingerprint}
    _log(client, run_id, _run_metrics(run) + _training_metrics(model.training or {}), params)
    if results_path is not None:
        client.log_artifact(run_id, str(results_path))
    client.set_terminated(run_id)
    return str(run_id)


def _comparison_metrics(pair: RunComparison) -> list[tuple[str, float, int]]:
    rows = []
    for task in pair.tasks.values():
        for metric in task.metrics:
            for field in ("baseline", "candidate", "delta", "p_value"):
                value = getattr(metric, field)
                if value is not None:
                    rows.append((metric_key(task.task, metric.metric, field), value, 0))
    return rows


def export_comparison(
    comparison: Comparison,
    gate: Sequence[RuleOutcome] = (),
    uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    report_files: Sequence[Path] = (),
) -> list[str]:
    """Log each baseline/candidate pair of a comparison (and the gate, when it ran); returns the MLflow run ids."""
    client, resolved = _client(uri)
    experiment_id = _experiment_id(client, experiment, resolved)
    run_ids = []
    for pair in comparison.comparisons:
        tags = {"harness.kind": "comparison", "harness.baseline": pair.baseline, "harness.candidate": pair.candidate}
        if gate:
            tags["harness.gate"] = "passed" if all(o.passed for o in gate) else "failed"
        name = f"{pair.candidate_label} vs {pair.baseline_label}"
        mlflow_run = client.create_run(experiment_id, run_name=name, tags=tags)
        run_id = mlflow_run.info.run_id
        metrics = _comparison_metrics(pair) + _training_metrics(comparison.training or {})
        if gate:
            metrics.append(("gate/passed", float(all(o.passed for o in gate)), 0))
            metrics.append(("gate/failed_rules", float(sum(not o.passed for o in gate)), 0))
        _log(client, run_id, metrics, {"baseline": pair.baseline_label, "candidate": pair.candidate_label})
        client.log_text(run_id, json.dumps(comparison.model_dump(mode="json"), indent=2), "comparison.json")
        for path in report_files:
            if path.is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
        run_ids.append(str(run_id))
    return run_ids
