"""Training data end to end: load, check, drop what the checks flag, tokenize, split off the eval set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters.checks import DataReport, check_examples
from adapters.config import TrainConfig
from adapters.formats import Example, load_examples
from adapters.tokenize import TokenizedExample, tokenize_example
from harness.core.data import data_fingerprint
from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_json


@dataclass
class TrainingData:
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    report: DataReport
    fingerprint: str


def _tokenize_all(examples: list[Example], tokenizer: Any, config: TrainConfig, path: Path) -> list[TokenizedExample]:
    tokenized = []
    for example in examples:
        try:
            tokenized.append(tokenize_example(example, tokenizer, config.max_seq_len, config.train_on_prompt))
        except HarnessError as error:
            raise HarnessError(
                error.message, path=path, line=example.line, field=error.field, hint=error.hint
            ) from None
    return tokenized


def _full_lengths(examples: list[Example], tokenizer: Any) -> list[int]:
    return [len(tokenize_example(e, tokenizer, max_seq_len=10**9, train_on_prompt=True).input_ids) for e in examples]


@dataclass
class RawTrainingData:
    """The data files' examples, read and parsed (bad rows found) before any model loads."""

    data_path: Path
    examples: list[Example]
    skipped: list[HarnessError]
    eval_path: Path | None
    eval_examples: list[Example] | None


def read_training_data(config: TrainConfig, data_path: Path, eval_path: Path | None) -> RawTrainingData:
    """Parse the training (and eval) file: a malformed row stops here, naming its file, line and field."""
    examples, skipped = load_examples(data_path, config.data_format, config.skip_bad_rows)
    eval_examples = load_examples(eval_path, config.data_format, config.skip_bad_rows)[0] if eval_path else None
    return RawTrainingData(data_path, examples, skipped, eval_path, eval_examples)


def prepare_training_data(config: TrainConfig, raw: RawTrainingData, tokenizer: Any) -> TrainingData:
    """Checked, tokenized training and eval examples. The eval set is the eval file's or a seeded held-out split."""
    data_path, eval_path, examples = raw.data_path, raw.eval_path, raw.examples
    report = check_examples(examples, _full_lengths(examples, tokenizer), config.max_seq_len, config.leakage_tasks)
    report.skipped = [str(error) for error in raw.skipped]
    drop = report.lines_to_drop(config.drop_duplicates, config.drop_leaked)
    examples = [e for e in examples if e.line not in drop]
    if raw.eval_examples is not None:
        eval_examples = raw.eval_examples
        train_examples = examples
    else:
        order = np.random.default_rng(config.seed).permutation(len(examples))
        n_eval = int(len(examples) * config.eval_fraction)
        eval_examples = [examples[i] for i in sorted(order[:n_eval])]
        train_examples = [examples[i] for i in sorted(order[n_eval:])]
    if not train_examples:
        raise HarnessError("no training rows left after checks and the eval split", path=data_path, field="data")
    fingerprint = hash_json(
        {
            "train": data_fingerprint(data_path),
            "eval": data_fingerprint(eval_path) if eval_path else None,
            "dropped": sorted(drop),
        }
    )
    return TrainingData(
        train=_tokenize_all(train_examples, tokenizer, config, data_path),
        eval=_tokenize_all(eval_examples, tokenizer, config, eval_path or data_path),
        report=report,
        fingerprint=fingerprint,
    )
