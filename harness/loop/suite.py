"""Suites for `harness loop`: which tasks to score, forgetting tasks, judges and pairwise judging, gate rules.

name: notices
tasks_dir: tasks                      # relative to this file
tasks: [notices_rewrite, notices_service, notices_plain_ppl, notices_judged]
forgetting: [general_english]         # general-domain perplexity before and after tuning
pairwise: {rubric: general, tasks: [notices_judged]}
gate: gate.yaml                       # optional; --gate overrides
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from harness.core.yamlfile import load_model_file


class PairwiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rubric: str = "general"
    tasks: list[str] = Field(min_length=1)


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    tasks_dir: Path | None = None
    tasks: list[str] = Field(min_length=1)
    forgetting: list[str] = Field(default_factory=list)
    pairwise: PairwiseConfig | None = None
    gate: Path | None = None
    limit: int | None = Field(None, gt=0)
    source: Path | None = Field(default=None, exclude=True)

    @property
    def all_tasks(self) -> list[str]:
        return [*self.tasks, *(t for t in self.forgetting if t not in self.tasks)]


def load_suite(path: Path) -> Suite:
    suite = load_model_file(path, Suite, "a suite", defaults={"name": path.stem})
    relative = {
        key: path.parent / value
        for key, value in (("tasks_dir", suite.tasks_dir), ("gate", suite.gate))
        if value is not None and not value.is_absolute()
    }
    return suite.model_copy(update={**relative, "source": path})
