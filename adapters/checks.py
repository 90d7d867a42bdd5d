"""Training-data checks run before training (and by `harness data check`): duplicates, empty or over-long
rows, and leakage into evaluation tasks measured as shared word n-grams (13-grams by default)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from adapters.formats import Example, example_text
from harness.core.samples import read_task_rows
from harness.core.text import normalize_text
from harness.evaluation.catalog import get_tasks

LEAKAGE_NGRAM = 13


@dataclass
class DataReport:
    n_rows: int
    exact_duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, line of its first copy)
    normalized_duplicates: list[tuple[int, int]] = field(default_factory=list)
    over_long: list[tuple[int, int]] = field(default_factory=list)  # (line, tokens)
    leaked: list[tuple[int, str]] = field(default_factory=list)  # (line, task name)
    skipped: list[str] = field(default_factory=list)  # errors of rows skipped as bad

    @property
    def clean(self) -> bool:
        return not (self.exact_duplicates or self.normalized_duplicates or self.over_long or self.leaked)

    def lines_to_drop(self, duplicates: bool, leaked: bool) -> set[int]:
        drop: set[int] = set()
        if duplicates:
            drop |= {line for line, _ in self.exact_duplicates + self.normalized_duplicates}
        if leaked:
            drop |= {line for line, _ in self.leaked}
        return drop


def ngrams(text: str, n: int = LEAKAGE_NGRAM) -> set[tuple[str, ...]]:
    words = normalize_text(text).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class EvalIndex:
    """What eval data looks like to the leakage check: n-grams of its long field values, and its short values
    (fewer than n words, at least `MIN_SHORT_WORDS`) matched whole."""

    grams: dict[tuple[str, ...], str] = field(default_factory=dict)
    shorts: dict[str, str] = field(default_factory=dict)

    def find(self, text: str, n: int) -> str | None:
        hit = next((self.grams[gram] for gram in ngrams(text, n) if gram in self.grams), None)
        if hit is None:
            padded = f" {normalize_text(text)} "
            hit = next((task for short, task in self.shorts.items() if f" {short} " in padded), None)
        return hit


MIN_SHORT_WORDS = 6


def _field_texts(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _field_texts(item)]
    return []


def eval_index(task_names: Iterable[str], n: int = LEAKAGE_NGRAM) -> EvalIndex:
    """The leakage index of the named eval tasks, built from every string field of every data row."""
    index = EvalIndex()
    for spec in get_tasks(list(task_names)):
        for row in read_task_rows(spec).rows:
            for text in (t for value in row.values.values() for t in _field_texts(value)):
                words = normalize_text(text).split()
                if len(words) >= n:
                    index.grams.update({gram: spec.name for gram in ngrams(text, n) if gram not in index.grams})
                elif len(words) >= MIN_SHORT_WORDS:
                    index.shorts.setdefault(" ".join(words), spec.name)
    return index


def check_examples(
    examples: Sequence[Example],
    token_lengths: Sequence[int] | None = None,
    max_seq_len: int | None = None,
    leakage_tasks: Iterable[str] = (),
    ngram: int = LEAKAGE_NGRAM,
) -> DataReport:
    """Find duplicates, rows longer than `max_seq_len` tokens, and rows sharing an n-gram with an eval task."""
    report = DataReport(n_rows=len(examples))
    first_exact: dict[str, int] = {}
    first_normalized: dict[str, int] = {}
    for example in examples:
        text = example_text(example)
        normalized = normalize_text(text)
        if text in first_exact:
            report.exact_duplicates.append((example.line, first_exact[text]))
        elif normalized in first_normalized:
            report.normalized_duplicates.append((example.line, first_normalized[normalized]))
        first_exact.setdefault(text, example.line)
        first_normalized.setdefault(normalized, example.line)
    if token_lengths is not None and max_seq_len is not None:
        report.over_long = [(e.line, n) for e, n in zip(examples, token_lengths, strict=True) if n > max_seq_len]
    leakage_tasks = list(leakage_tasks)
    index = eval_index(leakage_tasks, ngram) if leakage_tasks else None
    for example in examples if index else []:
        hit = index.find(example_text(example), ngram) if index else None
        if hit:
            report.leaked.append((example.line, hit))
    return report
