"""Training data formats, auto-detected per file: alpaca, chat messages, prompt/completion, plain text.

Every row becomes a list of turns (role, content); plain text becomes one unprompted segment. Bad rows raise
an error naming the file, line and field, or with `skip_bad_rows` are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.core.data import Row, read_rows
from harness.core.errors import HarnessError

DataFormatName = Literal["auto", "alpaca", "messages", "prompt_completion", "text"]
ROLES = ("system", "user", "assistant", "model")


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "model", "text"]
    content: str


@dataclass(frozen=True)
class Example:
    """One training example: the turns to render, and where it came from."""

    turns: tuple[Turn, ...]
    line: int


def detect_format(row: Row, path: Path) -> DataFormatName:
    keys = set(row.values)
    if "messages" in keys:
        return "messages"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise HarnessError(
        f"cannot tell the data format from the fields {sorted(keys)}",
        path=path,
        line=row.line,
        field="format",
        hint="rows need messages, instruction+output (alpaca), prompt+completion, or text",
    )


def _text(row: Row, path: Path, field: str, *, required: bool = True) -> str:
    value = row.values.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise HarnessError("missing or empty", path=path, line=row.line, field=field)
        return ""
    if not isinstance(value, str):
        raise HarnessError(f"must be a string, not {type(value).__name__}", path=path, line=row.line, field=field)
    return value


def _from_messages(row: Row, path: Path) -> tuple[Turn, ...]:
    messages = row.values.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HarnessError("must be a non-empty list of {role, content}", path=path, line=row.line, field="messages")
    turns: list[Turn] = []
    system = ""
    for index, message in enumerate(messages):
        field = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise HarnessError(
                f"role must be one of {', '.join(ROLES)}", path=path, line=row.line, field=f"{field}.role"
            )
        content = _text(Row(row.line, message), path, "content")
        if message["role"] == "system":
            system += content + "\n\n"  # Gemma has no system role: fold it into the next user turn
            continue
        role: Literal["user", "model"] = "user" if message["role"] == "user" else "model"
        if role == "user":
            content, system = system + content, ""
        if turns and turns[-1].role == role:
            raise HarnessError("two turns of the same role in a row", path=path, line=row.line, field=field)
        turns.append(Turn(role, content))
    if not turns or turns[-1].role != "model" or turns[0].role != "user":
        raise HarnessError(
            "a conversation must start with a user turn and end with an assistant turn",
            path=path,
            line=row.line,
            field="messages",
        )
    return tuple(turns)


def to_turns(row: Row, path: Path, data_format: DataFormatName) -> tuple[Turn, ...]:
    """The turns of one row in the given format (not 'auto')."""
    if data_format == "messages":
        return _from_messages(row, path)
    if data_format == "alpaca":
        instruction = _text(row, path, "instruction")
        extra = _text(row, path, "input", required=False)
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return (Turn("user", prompt), Turn("model", _text(row, path, "output")))
    if data_format == "prompt_completion":
        return (Turn("user", _text(row, path, "prompt")), Turn("model", _text(row, path, "completion")))
    return (Turn("text", _text(row, path, "text")),)


def load_examples(
    path: Path, data_format: DataFormatName = "auto", skip_bad_rows: bool = False
) -> tuple[list[Example], list[HarnessError]]:
    """Examples from a data file, and the errors of rows skipped (only with `skip_bad_rows`)."""
    rows = read_rows(path)
    chosen = detect_format(rows[0], path) if data_format == "auto" else data_format
    examples, skipped = [], []
    for row in rows:
        try:
            examples.append(Example(to_turns(row, path, chosen), row.line))
        except HarnessError as error:
            if not skip_bad_rows:
                raise
            skipped.append(error)
    if not examples:
        raise HarnessError("no usable rows", path=path, field="data")
    return examples, skipped


def example_text(example: Example) -> str:
    """All the text of an example, for duplicate and leakage checks."""
    return "\n".join(turn.content for turn in example.turns)


def row_dict(example: Example) -> dict[str, Any]:
    return {"line": example.line, "turns": [(t.role, t.content) for t in example.turns]}
