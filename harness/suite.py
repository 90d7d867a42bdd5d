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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import HarnessError
from harness.taskspec import yaml_line


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
    try:
        text = path.read_text(encoding="utf-8")
        raw, root = yaml.safe_load(text), yaml.compose(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise HarnessError(f"cannot read the suite: {error}", path=path) from None
    if not isinstance(raw, dict):
        raise HarnessError("a suite must be a mapping of fields", path=path, line=1)
    raw.setdefault("name", path.stem)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        location = tuple(first["loc"])
        raise HarnessError(
            first["msg"], path=path, line=yaml_line(root, location), field=".".join(str(p) for p in location)
        ) from None
    relative = {
        key: path.parent / value
        for key, value in (("tasks_dir", suite.tasks_dir), ("gate", suite.gate))
        if value is not None and not value.is_absolute()
    }
    return suite.model_copy(update={**relative, "source": path})
