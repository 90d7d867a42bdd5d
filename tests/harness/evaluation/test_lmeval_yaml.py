"""lm-evaluation-harness task files read unchanged: tests/fixtures/lm_eval holds 0.4.13's own YAML for ARC, PIQA,
GSM8K, TruthfulQA MC1 and an MMLU subject (its `include`s too). Each must build the requests lm-eval built from
the fixture rows (tests/fixtures/hub/lm_eval_first_requests.json); hooks we cannot run are refused by key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.core.errors import HarnessError
from harness.core.lmeval_yaml import is_lm_eval_file
from harness.core.samples import load_samples
from harness.core.taskspec import TaskSpec
from harness.evaluation.catalog import load_any_task_file, resolve_tasks
from tests.harness.evaluation.test_benchmarks import FIXTURES, benchmark_cache  # noqa: F401 (a fixture)

LM_EVAL = FIXTURES.parent / "lm_eval"
EXPECTED: dict[str, list[dict[str, Any]]] = json.loads((FIXTURES / "lm_eval_first_requests.json").read_text())


@pytest.mark.parametrize(
    ("file", "task", "shots"),
    [
        ("arc_easy.yaml", "arc_easy", 2),
        ("arc_challenge.yaml", "arc_challenge", 2),
        ("piqa.yaml", "piqa", 2),
        ("gsm8k.yaml", "gsm8k", 2),
        ("truthfulqa_mc1.yaml", "truthfulqa_mc1", 0),
        ("mmlu_abstract_algebra.yaml", "mmlu_abstract_algebra", 2),
    ],
)
def test_lm_eval_task_files_build_lm_evals_requests(
    file: str,
    task: str,
    shots: int,
    benchmark_cache: Path,  # noqa: F811
) -> None:
    assert is_lm_eval_file(LM_EVAL / file)
    spec = load_any_task_file(LM_EVAL / file)
    assert isinstance(spec, TaskSpec) and spec.name == task
    samples, _ = load_samples(spec.model_copy(update={"num_fewshot": shots}))
    expected = EXPECTED[task]
    if spec.kind == "generate":
        assert samples[0].prompt == expected[0]["arguments"][0]
        assert spec.generation.stop == expected[0]["arguments"][1]["until"] and [f.name for f in spec.filters] == [
            "strict-match",
            "flexible-extract",
        ]
        return
    assert samples[0].scored_pairs(spec.target_delimiter) == [tuple(r["arguments"]) for r in expected]


def test_a_task_file_runs_by_its_path(benchmark_cache: Path) -> None:  # noqa: F811
    specs, _ = resolve_tasks([str(LM_EVAL / "piqa.yaml")])
    assert [spec.name for spec in specs] == ["piqa"] and specs[0].dataset is not None


@pytest.mark.parametrize(("file", "key"), [("hellaswag.yaml", "process_docs"), ("default.yaml", "doc_to_text")])
def test_function_hooks_are_refused_naming_the_key(file: str, key: str) -> None:
    with pytest.raises(HarnessError) as caught:
        load_any_task_file(LM_EVAL / file)
    assert f"field '{key}'" in str(caught.value) and "!function" in str(caught.value)


def test_unknown_keys_and_filters_are_refused(tmp_path: Path) -> None:
    base = (LM_EVAL / "piqa.yaml").read_text()
    (tmp_path / "odd.yaml").write_text(base + "process_results_extra: 1\n")
    with pytest.raises(HarnessError, match="process_results_extra"):
        load_any_task_file(tmp_path / "odd.yaml")
    gsm = (LM_EVAL / "gsm8k.yaml").read_text().replace('function: "regex"', 'function: "lowercase"', 1)
    (tmp_path / "gsm.yaml").write_text(gsm)
    with pytest.raises(HarnessError, match=r"filter_list\.0"):
        load_any_task_file(tmp_path / "gsm.yaml")
