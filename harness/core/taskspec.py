"""Task specifications: the pydantic model behind a task YAML, and loading it with errors that name the field.

A YAML task:

    name: factual_qa
    description: Short factual questions
    kind: generate                 # or perplexity, multiple_choice, loglikelihood
    data: data/factual_qa.jsonl    # JSONL, CSV, parquet or a saved HF dataset dir; relative to this file
    template: "Q: {{ question }}\\nA:"
    reference_field: answers       # a string or a list of strings per row
    metrics: [exact_match, f1]     # or {name: rouge, options: {use_stemmer: true}}
    generation: {max_new_tokens: 16, stop: ["\\n"]}

A multiple-choice task scores each choice's log-likelihood after the prompt instead of generating:

    kind: multiple_choice
    template: "Question: {{ question }}\\nAnswer:"
    choices: choices               # a field holding a list, or a template yielding one: "{{ [sol1, sol2] }}"
    target: label                  # the gold: an index, the gold text, or a list of indices (several true)
    metrics: [acc, acc_norm]

With `continuation` (a field or template) the choices are contexts instead: each choice ends the prompt and the
shared continuation is scored after it (Winogrande's partial-context scoring). A `loglikelihood` task scores its
`target` as the continuation (LAMBADA). Scored continuations start with `target_delimiter` (default " ").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.core.fingerprint import hash_json
from harness.core.yamlfile import FieldError

TaskKind = Literal["generate", "perplexity", "multiple_choice", "loglikelihood"]
DataFormat = Literal["auto", "jsonl", "csv", "parquet", "hf_disk"]


class GenerationConfig(BaseModel):
    """Decoding settings. temperature 0 means greedy; otherwise sampling seeded by `seed`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(32, gt=0, le=4096)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0


class MetricConfig(BaseModel):
    """A metric by registered name, with keyword options for its function."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class FilterConfig(BaseModel):
    """A way of reading the answer out of generated text before scoring (lm-evaluation-harness's regex filter):
    the `group_select`-th match of `regex` (0 the first, -1 the last; with groups, the first non-empty group),
    stripped, or `fallback` when nothing matches. Each metric is reported once per filter, as `metric_<name>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    regex: str
    group_select: int = 0
    fallback: str = "[invalid]"

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        return value


class JudgeConfig(BaseModel):
    """An LLM-as-judge scorer: a rubric by name or path, plus the style a style rubric compares against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rubric: str
    style: str | None = None
    style_examples: list[str] = Field(default_factory=list)


Windows = Literal["strided", "lm_eval"]


class PerplexityConfig(BaseModel):
    """Rolling-window settings. `strided` (the default): windows of `max_length` tokens advancing by `stride`, each
    token scored once with as much left context as its window gives. `lm_eval`: lm-evaluation-harness's
    loglikelihood_rolling, blocks of `max_length` scored tokens that see only their own block, the last block with
    up to `max_length` tokens of context (stride does not apply); it reproduces lm-evaluation-harness's numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int = Field(1024, gt=1)
    stride: int = Field(512, gt=0)
    windows: Windows = "strided"

    @model_validator(mode="after")
    def _stride_fits(self) -> PerplexityConfig:
        if self.stride > self.max_length:
            raise FieldError("stride", "stride must not exceed max_length")
        if self.windows == "lm_eval" and "stride" in self.model_fields_set:
            raise FieldError("stride", "lm_eval windows do not stride: remove stride, or use windows: strided")
        return self

    def identity(self) -> dict[str, Any]:
        """What these settings mean for a score (the default windows, added later, are left out: older results
        keep their cache keys and fingerprints)."""
        dump = self.model_dump(mode="json")
        if self.windows == "strided":
            del dump["windows"]
        return dump


def _expand_shorthand(value: Any, key: str) -> Any:
    """A YAML list may name an entry by a bare string: `[bleu]` stands for `[{name: bleu}]`."""
    if isinstance(value, list):
        return [{key: item} if isinstance(item, str) else item for item in value]
    return value


class DatasetSource(BaseModel):
    """Task rows through `datasets.load_dataset`: a hub dataset (or a builder such as `json` with `data_files`), its
    config, the split to score and a pinned revision. The local cache is used first; offline it is all there is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    name: str | None = None
    split: str = "test"
    revision: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None

    def label(self, split: str | None = None) -> str:
        """`org/name[config]:split` (`@revision`), how errors and reports name the data."""
        config = f"[{self.name}]" if self.name else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"{self.path}{config}{revision}:{split or self.split}"


class TaskSpec(BaseModel):
    """One evaluation task: data, prompt, kind, scorers and decoding settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    version: int = 1
    kind: TaskKind
    data: Path | None = None  # a local file or saved dataset folder; or `dataset:` (a hub dataset)
    dataset: DatasetSource | None = None
    data_format: DataFormat = "auto"
    split: str | None = None  # data: the split of a saved DatasetDict folder to score (needed when it has several)
    id_field: str | None = None
    preprocess: str | None = None  # a registered row processor (@preprocessor), applied to every row first
    instruction: str = ""  # a template placed before the few-shot examples (lm-evaluation-harness's description)
    system_prompt: str | None = None  # a chat's system turn; without a chat template it leads the prompt
    template: str = "{{ text }}"
    reference_field: str | None = None
    choices: str | None = None  # multiple_choice: a field holding a list of strings, or a template yielding one
    target: str | None = None  # the gold (multiple_choice) or the continuation (loglikelihood): a field or template
    continuation: str | None = None  # multiple_choice with partial contexts: each choice ends the prompt, this follows
    chat_template: bool = False
    fewshot: list[dict[str, Any]] = Field(default_factory=list)  # fixed worked examples, the same for every row
    num_fewshot: int = Field(0, ge=0)  # or: this many examples drawn per row from the few-shot rows
    fewshot_split: str | None = None  # where drawn examples come from: a split of `dataset` (or of the `split` folder)
    fewshot_data: Path | None = None  # ... or a local file
    fewshot_sampler: Literal["random", "first_n"] = "random"
    fewshot_seed: int = 1234  # one seeded generator per task, drawing for the rows in order (as lm-eval)
    fewshot_exclude_self: bool | None = None  # draw n+1 and drop the row itself; None: when the splits are the same
    fewshot_separator: str = "\n\n"
    target_delimiter: str = " "  # between a few-shot prompt and its answer
    metrics: list[MetricConfig] = Field(min_length=1)
    filters: list[FilterConfig] = Field(default_factory=list)  # generate: answer extraction, each metric per filter
    judges: list[JudgeConfig] = Field(default_factory=list)
    generation: GenerationConfig = GenerationConfig()
    perplexity: PerplexityConfig = PerplexityConfig()
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_shorthand(cls, value: Any) -> Any:
        return _expand_shorthand(value, "name")

    @field_validator("judges", mode="before")
    @classmethod
    def _judge_shorthand(cls, value: Any) -> Any:
        return _expand_shorthand(value, "rubric")

    @model_validator(mode="after")
    def _one_source(self) -> TaskSpec:
        if (self.data is None) == (self.dataset is None):
            raise FieldError("data", "give either data (a local file) or dataset (a hub dataset), not both or neither")
        if self.num_fewshot and self.fewshot:
            raise FieldError("num_fewshot", "give fixed fewshot examples or num_fewshot drawn ones, not both")
        if self.fewshot_data is not None and self.fewshot_split is not None:
            raise FieldError("fewshot_data", "give fewshot_data (a file) or fewshot_split, not both")
        if self.split is not None and self.dataset is not None:
            raise FieldError("split", "a hub dataset names its split as dataset.split")
        if self.fewshot_split is not None and self.dataset is None and self.split is None:
            raise FieldError(
                "fewshot_split",
                "fewshot_split is a split of `dataset` or of a saved dataset folder with `split`; for a local file "
                "use fewshot_data",
            )
        return self

    @property
    def data_label(self) -> str:
        """How errors name the task's rows: the local path, or the hub dataset with config and split."""
        if self.data is not None:
            return f"{self.data}:{self.split}" if self.split else str(self.data)
        return self.dataset.label() if self.dataset else self.name

    @model_validator(mode="after")
    def _fields_of_kind(self) -> TaskSpec:
        if self.kind == "generate" and not self.reference_field:
            raise FieldError("reference_field", "a generate task needs reference_field")
        if self.kind != "generate" and self.judges:
            raise FieldError("judges", f"judges score generated text: a {self.kind} task cannot list judges")
        if self.kind == "multiple_choice" and not self.choices:
            raise FieldError("choices", "a multiple_choice task needs choices (a field or a template)")
        if self.kind in ("multiple_choice", "loglikelihood") and not self.target:
            what = "the gold choice" if self.kind == "multiple_choice" else "the continuation to score"
            raise FieldError("target", f"a {self.kind} task needs target ({what}: a field or a template)")
        if self.filters and self.kind != "generate":
            raise FieldError("filters", "filters read answers out of generated text: generate tasks only")
        if self.continuation is not None and self.kind != "multiple_choice":
            raise FieldError("continuation", "continuation (partial-context scoring) is for multiple_choice tasks")
        if self.kind not in ("multiple_choice", "loglikelihood") and (self.choices or self.target):
            field = "choices" if self.choices else "target"
            raise FieldError(field, f"{field} is for multiple_choice and loglikelihood tasks, not {self.kind} tasks")
        return self

    def with_overrides(
        self,
        num_fewshot: int | None = None,
        system_prompt: str | None = None,
        gen_kwargs: dict[str, Any] | None = None,
        chat_template: bool | None = None,
    ) -> TaskSpec:
        """The task with run-time prompt controls (--num-fewshot, --system-prompt, --gen-kwargs,
        --apply-chat-template) applied; a task with fixed worked examples keeps them, and a perplexity task scores
        its text as written."""
        update: dict[str, Any] = {}
        if chat_template is not None and self.kind != "perplexity":
            update["chat_template"] = chat_template
        if num_fewshot is not None and not self.fewshot:
            update["num_fewshot"] = num_fewshot
        if system_prompt is not None:
            update["system_prompt"] = system_prompt
        if gen_kwargs and self.kind == "generate":
            update["generation"] = GenerationConfig.model_validate({**self.generation.model_dump(), **gen_kwargs})
        return self.model_copy(update=update) if update else self

    def fingerprint(self, data_fingerprint: str) -> str:
        """Task identity: data content, template, metric config, decoding settings, version."""
        excluded = {"description", "data", "fewshot_data"} | ({"split"} if self.split is None else set())
        spec = self.model_dump(mode="json", exclude=excluded) | {"perplexity": self.perplexity.identity()}
        return hash_json({"spec": spec, "data": data_fingerprint})


class GroupSpec(BaseModel):
    """A named set of tasks (or groups) reported together as well as one by one: `micro` pools every member
    task's samples (MMLU's overall accuracy is over all its questions), `macro` averages the member tasks' values.
    A YAML file with a `group:` key is a group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    tasks: list[str] = Field(min_length=1)
    aggregate: Literal["micro", "macro"] = "micro"
    source: Path | None = Field(default=None, exclude=True)
