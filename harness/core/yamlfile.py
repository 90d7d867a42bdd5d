"""Reading YAML files into pydantic models, with errors that name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from harness.core.errors import HarnessError

Model = TypeVar("Model", bound=BaseModel)


class FieldError(ValueError):
    """A cross-field check's failure in a model validator, naming the field at fault: pydantic places such errors
    on the whole model, and `validate` moves them to this field (its file line)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def yaml_line(node: yaml.Node | None, location: tuple[int | str, ...]) -> int | None:
    """1-based line in the YAML source of the value at a pydantic error location (best effort): where a key is
    missing, the line of the mapping that lacks it, or none when that is the whole file."""
    line = None
    for key in location:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            match = node.value[key]
        else:
            match = None
        if match is None:
            break
        node, line = match, match.start_mark.line + 1
    return line


def read_mapping(path: Path, what: str) -> tuple[dict[str, Any], yaml.Node | None]:
    """The YAML file's top-level mapping and its node tree (for line numbers)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise HarnessError(f"cannot read {what}: {error}", path=path) from None
    try:
        raw, root = yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise HarnessError(
            f"malformed YAML: {getattr(error, 'problem', error)}", path=path, line=mark.line + 1 if mark else None
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HarnessError(f"{what} must be a mapping of fields", path=path, line=1)
    return raw, root


def validate(
    model: type[Model],
    raw: dict[str, Any],
    path: Path | None,
    root: yaml.Node | None,
    from_file: set[str] | None = None,
) -> Model:
    """`model` from `raw`; the first error names the field, and the file and line when the field came from it
    (`from_file`: the top-level keys that did; default all)."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        location, message = first_error(error)
        in_file = path is not None and (from_file is None or (bool(location) and location[0] in from_file))
        raise HarnessError(
            message,
            path=path if in_file else None,
            line=yaml_line(root, location) if in_file else None,
            field=".".join(str(part) for part in location) or None,
        ) from None


def first_error(error: ValidationError) -> tuple[tuple[int | str, ...], str]:
    """The first error's location (a FieldError's field appended) and message (a validator's own ValueError
    without pydantic's "Value error, " prefix)."""
    first = error.errors()[0]
    location, cause = tuple(first["loc"]), first.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        location = (*location, cause.field)
    return location, str(cause) if isinstance(cause, ValueError) else str(first["msg"])


def load_model_file(path: Path, model: type[Model], what: str, defaults: dict[str, Any] | None = None) -> Model:
    raw, root = read_mapping(path, what)
    return validate(model, {**(defaults or {}), **raw}, path, root)
