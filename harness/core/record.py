"""RunResult: the typed, versioned record every downstream step (compare, gate, reports) reads.

Written atomically: a temp file in the same folder, fsync, rename. A reader never sees half a file.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class MetricValue(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")  # NaN stays NaN (no samples), not null

    value: float
    stderr: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    higher_is_better: bool | None = None  # None: informational (a count or a sum), not a score
    metric: str
    signature: str | None = None
    n: int | None = None  # samples the value is over, where some were excluded (judge errors)
    n_errors: int | None = None  # judge failures: counted and excluded, never scored


class ChoiceRecord(BaseModel):
    """One choice of a log-likelihood sample: its text and what the model gave it (see registry.ChoiceStats)."""

    text: str
    logprob: float
    tokens: int
    greedy: bool
    unconditional: float | None = None


class SampleRecord(BaseModel):
    id: str
    prompt: str
    output: str | None = None  # generated text; for a multiple-choice sample, the most likely choice
    references: list[str] = Field(default_factory=list)
    choices: list[ChoiceRecord] = Field(default_factory=list)
    gold: list[int] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
    judgments: dict[str, Any] = Field(default_factory=dict)  # per rubric: raw judge text and any error
    cached: bool = False
    error: str | None = None  # why the model gave no output for it (a server error): left out of the metrics


class TaskRunSpec(BaseModel):
    name: str
    version: int
    kind: str
    fingerprint: str
    data_fingerprint: str
    data_path: str  # a local path, or a hub dataset as org/name[config]@revision:split
    data_revision: str | None = None  # the hub dataset's commit the rows were read at
    config: dict[str, Any]


class ModelRunSpec(BaseModel):
    name: str
    checkpoint: str  # a local folder or file, or the served model's name
    fingerprint: str
    base_fingerprint: str
    backend: str = "hf"  # hf (transformers in process) | gguf (llama.cpp in process) | openai (an endpoint)
    endpoint: str | None = None  # an openai backend's base URL
    hub_revision: str | None = None  # a hub model's snapshot commit
    adapter_path: str | None = None
    adapter_fingerprint: str | None = None
    training: dict[str, Any] | None = None  # the adapter's manifest.json (loss curve, config) when it has one
    dtype: str | None = None
    device: str | None = None
    quant: str | None = None


class RunSpec(BaseModel):
    model: ModelRunSpec
    tasks: list[TaskRunSpec]
    limit: int | None = None
    seed: int
    harness_version: str
    git_sha: str | None = None
    world_size: int = 1  # processes the samples were sharded across


class TaskResult(BaseModel):
    task: str
    n_samples: int
    n_cached: int
    n_errors: int = 0  # samples the model gave no output for (their records say why)
    judge_calls: int = 0
    metrics: dict[str, MetricValue]
    samples: list[SampleRecord]


class GroupResult(BaseModel):
    """A group's values over its tasks: `micro` pools their samples, `macro` averages their values."""

    members: list[str]  # as the group lists them (tasks or groups)
    tasks: list[str]  # every task under it
    aggregate: str
    n_samples: int
    metrics: dict[str, MetricValue]


class RunResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    created_at: datetime
    spec: RunSpec
    wall_seconds: float
    tasks: dict[str, TaskResult]
    groups: dict[str, GroupResult] = Field(default_factory=dict)

    def write(self, path: Path) -> Path:
        """Write atomically as JSON; returns the path."""
        write_atomic(path, self.model_dump_json(indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> RunResult:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp_path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_path, path)
