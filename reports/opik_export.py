"""Export a RunResult to Opik (optional extra `[opik]`): per task a dataset (created or reused), an experiment
carrying the run spec as its config, one trace per sample with its scores as feedback scores, and the experiment
items linking dataset items to traces. Runs only when the user has configured Opik."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.record import RunResult, SampleRecord

PRIVACY_DEFAULTS = {"OPIK_SENTRY_ENABLE": "false", "OPIK_ANALYTICS_ENABLE": "false"}


@dataclass(frozen=True)
class ExportSummary:
    project: str | None
    experiments: dict[str, str]  # task -> experiment name
    items: int


def opik_configured() -> bool:
    config_file = Path(os.environ.get("OPIK_CONFIG_PATH", "~/.opik.config")).expanduser()
    return bool(os.environ.get("OPIK_URL_OVERRIDE") or os.environ.get("OPIK_API_KEY")) or config_file.is_file()


def _item_id(run: RunResult, task: str, sample_id: str) -> str:
    """A stable dataset item id per (task data, sample): re-exports reuse the same dataset items."""
    data = next(t.data_fingerprint for t in run.spec.tasks if t.name == task)
    digest = uuid.uuid5(uuid.NAMESPACE_URL, f"harness:{task}:{data}:{sample_id}").hex
    return str(uuid.UUID(f"{digest[:12]}7{digest[13:16]}8{digest[17:]}"))  # shaped as a UUID v7, as Opik expects


def _feedback(sample: SampleRecord) -> list[Any]:
    from opik.types import FeedbackScoreDict

    return [FeedbackScoreDict(name=name, value=value) for name, value in sample.scores.items() if value == value]


def export_run(run: RunResult, project: str | None = None, dataset_prefix: str = "harness") -> ExportSummary:
    """Send the run to Opik through its SDK: per task dataset -> experiment -> traces with scores -> flush -> items;
    a last flush."""
    if not opik_configured():
        raise HarnessError(
            "Opik is not configured",
            field="--opik",
            hint="set OPIK_URL_OVERRIDE or OPIK_API_KEY, or run `opik configure` (~/.opik.config)",
        )
    for name, value in PRIVACY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        import opik
        from opik.api_objects.experiment.experiment_item import ExperimentItemReferences
    except ImportError:
        raise HarnessError(
            "Opik export needs the opik extra", field="--opik", hint="pip install 'harness[opik]'"
        ) from None

    client = opik.Opik(project_name=project, _show_misconfiguration_message=False)
    config = run.spec.model_dump(mode="json")
    experiments, items = {}, 0
    for task_name, task in run.tasks.items():
        dataset = client.get_or_create_dataset(name=f"{dataset_prefix}-{task_name}")
        ids = [_item_id(run, task_name, sample.id) for sample in task.samples]
        dataset.insert(
            [
                {"id": item_id, "sample_id": sample.id, "input": sample.prompt, "expected_output": sample.references}
                for item_id, sample in zip(ids, task.samples, strict=True)
            ]
        )
        experiment_name = f"{run.run_id}-{task_name}"
        experiment = client.create_experiment(
            dataset_name=dataset.name, name=experiment_name, experiment_config={**config, "task": task_name}
        )
        references = []
        for item_id, sample in zip(ids, task.samples, strict=True):
            trace = client.trace(
                name=task_name,
                input={"prompt": sample.prompt},
                output={"output": sample.output, "references": sample.references},
                metadata={"sample_id": sample.id, "run_id": run.run_id},
                feedback_scores=_feedback(sample),
            )
            references.append(ExperimentItemReferences(dataset_item_id=item_id, trace_id=trace.id))
        # The SDK batches traces on a timer but streams experiment items at once: without this flush an item
        # could reach the server before the trace it links.
        client.flush()
        experiment.insert(references)
        experiments[task_name] = experiment_name
        items += len(references)
    client.flush()
    return ExportSummary(project=project, experiments=experiments, items=items)
