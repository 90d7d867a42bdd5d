"""Samples: task rows rendered into prompts, references and, for the log-likelihood kinds, the scored pairs.

Prompts are Jinja2 templates rendered in a sandbox. A multiple-choice task's `choices` and `target` are each a
field name or a template; a template's text is read as a Python literal where it is one (`"{{ [sol1, sol2] }}"`
gives a list, `"{{ label }}"` an index), as lm-evaluation-harness reads doc_to_choice and doc_to_target. Every
error names the data file, the row's line and the field.
"""

from __future__ import annotations

import ast
import dataclasses
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from harness.core.data import Row, TaskRows, data_fingerprint, read_rows
from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_json
from harness.core.hub_data import read_hub_rows
from harness.core.registry import lookup_preprocessor
from harness.core.taskspec import TaskSpec


def _regex_replace(text: str, pattern: str, replacement: str = "", count: int = 0) -> str:
    """The `regex_replace` filter lm-evaluation-harness's templates use."""
    return re.sub(pattern, replacement, text, count=count)


# Sandboxed: a task file from elsewhere must not reach Python internals (`cycler.__init__.__globals__.os`).
_JINJA = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
_JINJA.filters["regex_replace"] = _regex_replace


@dataclasses.dataclass(frozen=True)
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
    system: str | None = None  # the system turn, when the task applies a chat template

    def scored_pairs(self, delimiter: str, context: str | None = None) -> list[tuple[str, str]]:
        """The (context, continuation) pairs whose log-likelihoods the sample needs, one per choice; `context`
        replaces the prompt (the chat-rendered prompt)."""
        context = self.prompt if context is None else context
        if self.continuation is not None:
            return [(context + choice, delimiter + self.continuation) for choice in self.choices]
        return [(context, delimiter + choice) for choice in self.choices]


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
            if text is not None and (name in ("template", "instruction") or is_template(text))
        }

    def _texts(self) -> list[tuple[str, str | None]]:
        spec = self.spec
        return [
            ("template", spec.template),
            ("instruction", spec.instruction or None),
            ("choices", spec.choices),
            ("target", spec.target),
            ("continuation", spec.continuation),
            (
                "reference_field",
                spec.reference_field if spec.reference_field and is_template(spec.reference_field) else None,
            ),
        ]

    def _compile(self, text: str, field: str) -> jinja2.Template:
        try:
            return _JINJA.from_string(text)
        except jinja2.TemplateSyntaxError as error:
            raise HarnessError(f"bad Jinja template: {error.message}", path=self.spec.source, field=field) from None

    def fields(self) -> set[str]:
        """Every row field the task reads."""
        spec = self.spec
        needed = {f for f in (spec.reference_field, spec.id_field) if f and not is_template(f)}
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
            raise HarnessError(f"template failed: {error}", path=self.spec.data_label, line=line, field=name) from None

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
        raise HarnessError("choices must be a non-empty list", path=spec.data_label, line=line, field="choices")
    if not all(isinstance(choice, str | int | float) for choice in choices):
        raise HarnessError("each choice must be a string", path=spec.data_label, line=line, field="choices")
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
                    f"gold '{item}' is not one of the {len(choices)} choices",
                    path=spec.data_label,
                    line=line,
                    field="target",
                )
            item = choices.index(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise HarnessError(
                f"gold must be an index or a choice, not {item!r}", path=spec.data_label, line=line, field="target"
            )
        if not 0 <= item < len(choices):
            raise HarnessError(
                f"gold index {item} is out of range for {len(choices)} choices",
                path=spec.data_label,
                line=line,
                field="target",
            )
        golds.append(item)
    if not golds:
        raise HarnessError("no gold choice", path=spec.data_label, line=line, field="target")
    return tuple(golds)


def _references(renderer: _Renderer, values: dict[str, Any], line: int | None) -> list[str]:
    spec = renderer.spec
    if spec.reference_field is None:
        return []
    if "reference_field" in renderer.templates:  # a template (lm-eval's doc_to_target) gives one reference
        return [renderer.text("reference_field", values, line)]
    value = values[spec.reference_field]
    references = value if isinstance(value, list) else [value]
    if not references or not all(isinstance(ref, str | int | float) for ref in references):
        raise HarnessError(
            "references must be a string or a non-empty list of strings",
            path=spec.data_label,
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


class _FewshotSampler:
    """Worked examples per row, drawn as lm-evaluation-harness draws them: one generator seeded once per task and
    drawing for the rows in order (`random`), or the first n rows of the pool for every row (`first_n`). When the
    pool may hold the row itself, n+1 are drawn and the row is dropped."""

    def __init__(self, spec: TaskSpec, pool: list[Row], same_split: bool) -> None:
        self.n, self.sampler, self.pool = spec.num_fewshot, spec.fewshot_sampler, pool
        self.exclude_self = same_split if spec.fewshot_exclude_self is None else spec.fewshot_exclude_self
        self.rnd = random.Random(spec.fewshot_seed)
        if self.n > len(pool) - (1 if same_split else 0):
            raise HarnessError(
                f"num_fewshot {self.n} needs more few-shot rows than the {len(pool)} there are",
                path=spec.source,
                field="num_fewshot",
            )

    def draw(self, values: dict[str, Any]) -> list[Row]:
        if self.sampler == "first_n":
            pool = [r for r in self.pool if r.values != values] if self.exclude_self else self.pool
            return pool[: self.n]
        if not self.exclude_self:
            return self.rnd.sample(self.pool, self.n)
        drawn = [r for r in self.rnd.sample(self.pool, self.n + 1) if r.values != values][: self.n]
        if len(drawn) < self.n:  # the row was in the pool more than once
            drawn = self.rnd.sample([r for r in self.pool if r.values != values], self.n)
        return drawn


def _fewshot_answer(sample: Sample, spec: TaskSpec) -> str:
    """A worked example's answer: its gold choice, or its first reference (not a list's repr)."""
    if sample.continuation is not None:
        return sample.choices[sample.gold[0]] + spec.target_delimiter + sample.continuation
    if sample.choices:
        return sample.choices[sample.gold[0]]
    return sample.references[0] if sample.references else ""


def _shot(renderer: _Renderer, values: dict[str, Any], line: int | None) -> str:
    """One worked example: its prompt, the delimiter, its answer, the separator."""
    spec = renderer.spec
    sample = _sample(renderer, "fewshot", "", values, line)
    # Partial-context scoring: the gold context, then the continuation (no delimiter between prompt and choice).
    delimiter = "" if sample.continuation is not None else spec.target_delimiter
    return sample.prompt + delimiter + _fewshot_answer(sample, spec) + spec.fewshot_separator


def _prefixes(renderer: _Renderer, rows: Sequence[Row], fewshot_rows: list[Row] | None) -> Callable[[int], str]:
    """The text before each row's own prompt: the system prompt (no chat template), the instruction and the
    worked examples (fixed ones, or drawn per row)."""
    spec = renderer.spec
    system = spec.system_prompt + spec.fewshot_separator if spec.system_prompt and not spec.chat_template else ""
    fixed = "".join(_shot(renderer, example, None) for example in spec.fewshot)
    sampler = None
    if spec.num_fewshot:
        pool = fewshot_rows if fewshot_rows is not None else list(rows)
        sampler = _FewshotSampler(spec, pool, same_split=fewshot_rows is None)
    shots: dict[int, str] = {}

    def prefix(index: int) -> str:
        row = rows[index]
        instruction = renderer.render("instruction", row.values, row.line) if spec.instruction else ""
        if sampler is None:
            return system + instruction + fixed
        drawn = sampler.draw(row.values)
        for shot in drawn:
            if id(shot) not in shots:
                shots[id(shot)] = _shot(renderer, shot.values, shot.line)
        return system + instruction + "".join(shots[id(shot)] for shot in drawn)

    return prefix


def _preprocessed(spec: TaskSpec, rows: list[Row]) -> list[Row]:
    if spec.preprocess is None:
        return rows
    process = lookup_preprocessor(spec.preprocess, spec.source)
    processed = []
    for row in rows:
        try:
            processed.append(Row(row.line, process(dict(row.values))))
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise HarnessError(
                f"preprocess '{spec.preprocess}' failed: {type(error).__name__}: {error}",
                path=spec.data_label,
                line=row.line,
                field="preprocess",
            ) from None
    return processed


def build_samples(spec: TaskSpec, rows: list[Row], fewshot_rows: list[Row] | None = None) -> list[Sample]:
    """Render each row through the task's templates; every row must carry every field the task uses. Drawn
    few-shot examples come from `fewshot_rows`, or from `rows` themselves (never the row being scored)."""
    rows = _preprocessed(spec, rows)
    fewshot_rows = _preprocessed(spec, fewshot_rows) if fewshot_rows is not None else None
    renderer = _Renderer(spec)
    needed = renderer.fields()
    prefix = _prefixes(renderer, rows, fewshot_rows)
    system = spec.system_prompt if spec.chat_template else None
    samples, seen_ids = [], set()
    for index, row in enumerate(rows):
        missing = sorted(field for field in needed if row.values.get(field) is None)
        if missing:
            raise HarnessError(
                "missing or null",
                path=spec.data_label,
                line=row.line,
                field=missing[0],
                hint=f"the task's template, choices, target, reference_field or id_field use it ({spec.source})",
            )
        sample_id = str(row.values[spec.id_field]) if spec.id_field else str(index)
        if sample_id in seen_ids:
            raise HarnessError(f"duplicate id '{sample_id}'", path=spec.data_label, line=row.line, field=spec.id_field)
        seen_ids.add(sample_id)
        sample = _sample(renderer, sample_id, prefix(index), row.values, row.line)
        samples.append(dataclasses.replace(sample, system=system) if system else sample)
    return samples


def read_task_rows(spec: TaskSpec) -> TaskRows:
    """The rows of a task's local file or hub dataset, and of its few-shot source when it names one."""
    if spec.dataset is not None:
        return read_hub_rows(spec.dataset, spec.fewshot_split if spec.num_fewshot else None)
    assert spec.data is not None  # the spec checks it has one source
    rows = read_rows(spec.data, spec.data_format, spec.split)
    if spec.fewshot_split not in (None, spec.split) and spec.num_fewshot:  # another split of the same saved folder
        fewshot_rows = read_rows(spec.data, spec.data_format, spec.fewshot_split)
        return TaskRows(rows, fewshot_rows, data_fingerprint(spec.data))
    if spec.fewshot_data is None or not spec.num_fewshot:
        return TaskRows(rows, None, data_fingerprint(spec.data))
    fewshot = read_rows(spec.fewshot_data)
    return TaskRows(rows, fewshot, hash_json([data_fingerprint(spec.data), data_fingerprint(spec.fewshot_data)]))


def load_samples(spec: TaskSpec) -> tuple[list[Sample], TaskRows]:
    """The task's samples, and the rows they came from (with their fingerprint and a hub dataset's commit)."""
    task_rows = read_task_rows(spec)
    return build_samples(spec, task_rows.rows, task_rows.fewshot), task_rows
