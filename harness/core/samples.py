"""Samples: task rows rendered into prompts, references and, for the log-likelihood kinds, the scored pairs.

Prompts are Jinja2 templates rendered in a sandbox. A multiple-choice task's `choices` and `target` are each a
field name or a template; a template's text is read as a Python literal where it is one (`"{{ [sol1, sol2] }}"`
gives a list, `"{{ label }}"` an index), as lm-evaluation-harness reads doc_to_choice and doc_to_target. Every
error names the data file, the row's line and the field.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from harness.core.data import Row, data_fingerprint, read_rows
from harness.core.errors import HarnessError
from harness.core.taskspec import TaskSpec

# Sandboxed: a task file from elsewhere must not reach Python internals (`cycler.__init__.__globals__.os`).
_JINJA = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


@dataclass(frozen=True)
class Sample:
    """One item to evaluate: the rendered prompt (or text to score) and its references. A log-likelihood sample
    also has its choices (a loglikelihood task: the one continuation), the gold choice indices and, under
    partial-context scoring (Winogrande), the continuation shared by all choices, which are then contexts."""

    id: str
    prompt: str
    references: list[str]
    choices: tuple[str, ...] = ()
    gold: tuple[int, ...] = ()
    continuation: str | None = None

    def scored_pairs(self, delimiter: str) -> list[tuple[str, str]]:
        """The (context, continuation) pairs whose log-likelihoods the sample needs, one per choice."""
        if self.continuation is not None:
            return [(self.prompt + choice, delimiter + self.continuation) for choice in self.choices]
        return [(self.prompt, delimiter + choice) for choice in self.choices]


def is_template(text: str) -> bool:
    """A `choices` / `target` value is a template when it has Jinja markup, else it names a field."""
    return "{{" in text or "{%" in text


class _Renderer:
    """The task's templates, compiled once; renders rows with errors that name file, line and field."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.templates = {
            name: self._compile(text, name)
            for name, text in self._texts()
            if text is not None and (name == "template" or is_template(text))
        }

    def _texts(self) -> list[tuple[str, str | None]]:
        spec = self.spec
        return [
            ("template", spec.template),
            ("choices", spec.choices),
            ("target", spec.target),
            ("continuation", spec.continuation),
        ]

    def _compile(self, text: str, field: str) -> jinja2.Template:
        try:
            return _JINJA.from_string(text)
        except jinja2.TemplateSyntaxError as error:
            raise HarnessError(f"bad Jinja template: {error.message}", path=self.spec.source, field=field) from None

    def fields(self) -> set[str]:
        """Every row field the task reads."""
        spec = self.spec
        needed = {f for f in (spec.reference_field, spec.id_field) if f}
        for name, text in self._texts():
            if text is None:
                continue
            if name in self.templates:
                needed |= jinja2.meta.find_undeclared_variables(_JINJA.parse(text))
            else:
                needed.add(text)
        return needed

    def render(self, name: str, values: dict[str, Any], line: int | None) -> str:
        try:
            return self.templates[name].render(**values)
        except jinja2.TemplateError as error:
            raise HarnessError(f"template failed: {error}", path=self.spec.data, line=line, field=name) from None

    def text(self, name: str, values: dict[str, Any], line: int | None) -> str:
        """A text-valued setting of a row (a loglikelihood target, a continuation): the field's or template's text."""
        return self.render(name, values, line) if name in self.templates else str(values[getattr(self.spec, name)])

    def value(self, name: str, values: dict[str, Any], line: int | None) -> Any:
        """`choices` or `target` of a row: the field's value, or the template's text read as a literal."""
        if name not in self.templates:
            return values[getattr(self.spec, name)]
        rendered = self.render(name, values, line)
        try:
            return ast.literal_eval(rendered.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return rendered


def _choices(renderer: _Renderer, values: dict[str, Any], line: int | None) -> tuple[str, ...]:
    spec = renderer.spec
    if spec.kind == "loglikelihood":
        return (renderer.text("target", values, line),)
    choices = renderer.value("choices", values, line)
    if not isinstance(choices, list | tuple) or not choices:
        raise HarnessError("choices must be a non-empty list", path=spec.data, line=line, field="choices")
    if not all(isinstance(choice, str | int | float) for choice in choices):
        raise HarnessError("each choice must be a string", path=spec.data, line=line, field="choices")
    return tuple(str(choice) for choice in choices)


def _gold(renderer: _Renderer, values: dict[str, Any], choices: tuple[str, ...], line: int | None) -> tuple[int, ...]:
    """Gold indices from an index, a digit string, the gold choice's text, or a list of either."""
    spec = renderer.spec
    if spec.kind == "loglikelihood":
        return (0,)
    target = renderer.value("target", values, line)
    golds = []
    for item in target if isinstance(target, list | tuple) else [target]:
        if isinstance(item, str) and item.strip().isdigit() and item not in choices:
            item = int(item)
        if isinstance(item, str):
            if item not in choices:
                raise HarnessError(
                    f"gold '{item}' is not one of the {len(choices)} choices", path=spec.data, line=line, field="target"
                )
            item = choices.index(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise HarnessError(
                f"gold must be an index or a choice, not {item!r}", path=spec.data, line=line, field="target"
            )
        if not 0 <= item < len(choices):
            raise HarnessError(
                f"gold index {item} is out of range for {len(choices)} choices",
                path=spec.data,
                line=line,
                field="target",
            )
        golds.append(item)
    if not golds:
        raise HarnessError("no gold choice", path=spec.data, line=line, field="target")
    return tuple(golds)


def _references(renderer: _Renderer, values: dict[str, Any], line: int | None) -> list[str]:
    spec = renderer.spec
    if spec.reference_field is None:
        return []
    value = values[spec.reference_field]
    references = value if isinstance(value, list) else [value]
    if not references or not all(isinstance(ref, str | int | float) for ref in references):
        raise HarnessError(
            "references must be a string or a non-empty list of strings",
            path=spec.data,
            line=line,
            field=spec.reference_field,
        )
    return [str(ref) for ref in references]


def _sample(renderer: _Renderer, sample_id: str, prefix: str, values: dict[str, Any], line: int | None) -> Sample:
    spec = renderer.spec
    prompt = prefix + renderer.render("template", values, line)
    if spec.kind not in ("multiple_choice", "loglikelihood"):
        return Sample(sample_id, prompt, _references(renderer, values, line))
    choices = _choices(renderer, values, line)
    gold = _gold(renderer, values, choices, line)
    continuation = renderer.text("continuation", values, line) if spec.continuation else None
    return Sample(sample_id, prompt, [choices[i] for i in gold], choices, gold, continuation)


def _fewshot_answer(sample: Sample, spec: TaskSpec) -> str:
    """A worked example's answer: its gold choice, or its first reference (not a list's repr)."""
    if sample.continuation is not None:
        return sample.choices[sample.gold[0]] + spec.target_delimiter + sample.continuation
    if sample.choices:
        return sample.choices[sample.gold[0]]
    return sample.references[0] if sample.references else ""


def _fewshot_prefix(renderer: _Renderer) -> str:
    spec = renderer.spec
    shots = []
    for example in renderer.spec.fewshot:
        sample = _sample(renderer, "fewshot", "", example, None)
        # Partial-context scoring: the gold context, then the continuation (no delimiter between prompt and choice).
        delimiter = "" if sample.continuation is not None else spec.target_delimiter
        shots.append(sample.prompt + delimiter + _fewshot_answer(sample, spec))
    return "".join(shot + spec.fewshot_separator for shot in shots)


def build_samples(spec: TaskSpec, rows: list[Row]) -> list[Sample]:
    """Render each row through the task's templates; every row must carry every field the task uses."""
    renderer = _Renderer(spec)
    needed = renderer.fields()
    prefix = _fewshot_prefix(renderer)
    samples, seen_ids = [], set()
    for index, row in enumerate(rows):
        missing = sorted(field for field in needed if row.values.get(field) is None)
        if missing:
            raise HarnessError(
                "missing or null",
                path=spec.data,
                line=row.line,
                field=missing[0],
                hint=f"the task's template, choices, target, reference_field or id_field use it ({spec.source})",
            )
        sample_id = str(row.values[spec.id_field]) if spec.id_field else str(index)
        if sample_id in seen_ids:
            raise HarnessError(f"duplicate id '{sample_id}'", path=spec.data, line=row.line, field=spec.id_field)
        seen_ids.add(sample_id)
        samples.append(_sample(renderer, sample_id, prefix, row.values, row.line))
    return samples


def load_samples(spec: TaskSpec) -> tuple[list[Sample], str]:
    """The task's samples and the fingerprint of its data."""
    rows = read_rows(spec.data, spec.data_format)
    return build_samples(spec, rows), data_fingerprint(spec.data)
