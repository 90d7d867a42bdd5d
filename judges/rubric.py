"""Rubrics: YAML files of dimensions, each with instructions and an anchored 1-5 scale.

Shipped rubrics live in `judges/rubrics/`; users add their own folders. Errors name the file, line and field.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_json
from harness.core.yamlfile import load_model_file

BUILTIN_RUBRICS = Path(__file__).parent / "rubrics"
SCALE = (1, 2, 3, 4, 5)


class Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    instructions: str = Field(min_length=1)
    scale: dict[int, str]

    @field_validator("scale")
    @classmethod
    def _anchored_one_to_five(cls, scale: dict[int, str]) -> dict[int, str]:
        if sorted(scale) != list(SCALE) or not all(text.strip() for text in scale.values()):
            raise ValueError("needs an anchor description for each level 1, 2, 3, 4 and 5")
        return scale


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    requires_reference: bool = False
    requires_style: bool = False
    dimensions: list[Dimension] = Field(min_length=1)

    @property
    def fingerprint(self) -> str:
        return hash_json(self.model_dump(mode="json"))


def load_rubric_file(path: Path) -> Rubric:
    return load_model_file(path, Rubric, "a rubric", defaults={"name": path.stem})


def find_rubric(name_or_path: str, extra_dirs: Iterable[Path] = ()) -> Rubric:
    """A rubric by name (shipped or in `extra_dirs`) or by file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_rubric_file(path)
    for folder in [*extra_dirs, BUILTIN_RUBRICS]:
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return load_rubric_file(candidate)
    known = sorted(p.stem for folder in [BUILTIN_RUBRICS, *extra_dirs] for p in folder.glob("*.yaml"))
    raise HarnessError(f"unknown rubric '{name_or_path}'", field="rubric", hint=f"known rubrics: {', '.join(known)}")
