"""Training-data checks run before training (and by `harness data check`): duplicates, empty or over-long
rows, and leakage into evaluation tasks measured as shared word n-grams (13-grams by default)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from adapters.formats import Example, example_text
from harness.data import load_samples
from harness.metrics import normalize_text
from harness.registry import get_tasks

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


def task_ngrams(task_names: Iterable[str], n: int = LEAKAGE_NGRAM) -> dict[tuple[str, ...], str]:
    """Every n-gram of the named eval tasks' prompts and references, mapped to the task it came from."""
    index: dict[tuple[str, ...], str] = {}
    for spec in get_tasks(list(task_names)):
        samples, _ = load_samples(spec)
        for sample in samples:
            for gram in ngrams(" ".join([sample.prompt, *sample.references]), n):
                index.setdefault(gram, spec.name)
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
    index = task_ngrams(leakage_tasks, ngram) if leakage_tasks else {}
    for example in examples if index else []:
        hit = next((index[gram] for gram in ngrams(example_text(example), ngram) if gram in index), None)
        if hit:
            report.leaked.append((example.line, hit))
    return report
