"""The shipped standard benchmarks, from a pre-filled offline hub cache holding fixture rows in the real schema.

The prompts and continuations of each task's first document must equal those lm-evaluation-harness 0.4.13 built
from the same rows (its real task code, few-shot seed 1234, 2 shots where the task takes few-shot examples):
tests/fixtures/hub/lm_eval_first_requests.json was written by that run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.backends.hf_backend import HFBackend
from harness.core.errors import HarnessError
from harness.core.samples import load_samples
from harness.evaluation.catalog import find_catalog, resolve_tasks
from tests.hubcache import prefill_hub_dataset

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hub"
HUB = {  # repo: {config: {split: fixture file}}
    "allenai/ai2_arc": {
        "ARC-Easy": {"test": "arc_easy_test", "train": "arc_easy_train"},
        "ARC-Challenge": {"test": "arc_challenge_test", "train": "arc_challenge_train"},
    },
    "Rowan/hellaswag": {"default": {"validation": "hellaswag_validation", "train": "hellaswag_train"}},
    "baber/piqa": {"default": {"validation": "piqa_validation", "train": "piqa_train"}},
    "allenai/winogrande": {"winogrande_xl": {"validation": "winogrande_validation", "train": "winogrande_train"}},
    "truthfulqa/truthful_qa": {"multiple_choice": {"validation": "truthfulqa_mc1_validation"}},
    "openai/gsm8k": {"main": {"test": "gsm8k_test", "train": "gsm8k_train"}},
    "cais/mmlu": {
        subject: {"test": f"mmlu_{subject}_test", "dev": f"mmlu_{subject}_dev"}
        for subject in ("abstract_algebra", "high_school_geography")
    },
}
SHOTS = {"truthfulqa_mc1": 0, "truthfulqa_mc2": 0}  # lm-eval fixes these at 0; the others ran with 2


@pytest.fixture
def benchmark_cache(offline_hub: Path) -> Path:
    for repo, configs in HUB.items():
        files = {
            config: {split: FIXTURES / f"{name}.jsonl" for split, name in splits.items()}
            for config, splits in configs.items()
        }
        prefill_hub_dataset(offline_hub, repo, files)
    return offline_hub


def test_standard_tasks_and_groups_are_listed() -> None:
    catalog = find_catalog()
    standard = {"arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "gsm8k", "truthfulqa_mc1"}
    assert standard | {"truthfulqa_mc2", "mmlu_abstract_algebra", "mmlu_world_religions"} <= set(catalog.tasks)
    assert len([name for name in catalog.tasks if name.startswith("mmlu_")]) == 57
    assert {"mmlu", "mmlu_stem", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences"} <= set(catalog.groups)
    specs, groups = resolve_tasks(["mmlu"])
    assert len(specs) == 57 and groups[0].group == "mmlu" and len(groups) == 5


@pytest.mark.parametrize("task", json.loads((FIXTURES / "lm_eval_first_requests.json").read_text()))
def test_first_document_requests_equal_lm_evaluation_harness(task: str, benchmark_cache: Path) -> None:
    expected: list[dict[str, Any]] = json.loads((FIXTURES / "lm_eval_first_requests.json").read_text())[task]
    spec = find_catalog().tasks[task]
    spec = spec.model_copy(update={"num_fewshot": SHOTS.get(task, 2)})
    samples, rows = load_samples(spec)
    assert rows.revision == "0" * 40
    first = samples[0]
    if spec.kind == "generate":
        assert [first.prompt] == [request["arguments"][0] for request in expected]
        return
    pairs = first.scored_pairs(spec.target_delimiter)
    assert pairs == [tuple(request["arguments"]) for request in expected]


def test_a_dataset_missing_from_the_offline_cache_is_one_clear_error(offline_hub: Path) -> None:
    spec = find_catalog().tasks["arc_easy"]
    with pytest.raises(HarnessError) as caught:
        load_samples(spec)
    message = str(caught.value)
    assert "allenai/ai2_arc[ARC-Easy]:test" in message and "offline" in message
    assert "datasets.load_dataset('allenai/ai2_arc', 'ARC-Easy')" in message


def test_a_pinned_revision_other_than_the_cached_one_is_refused(benchmark_cache: Path) -> None:
    spec = find_catalog().tasks["piqa"]
    pinned = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"revision": "1" * 40})})  # type: ignore[union-attr]
    with pytest.raises(HarnessError, match=r"not in the local cache|pins"):
        load_samples(pinned)


def _run_benchmarks(gemma: Any, cache: Any, names: list[str], tasks_dir: Path) -> Any:
    """One shot per task; `mmlu_fixture` is a group of the two MMLU subjects the fixture cache holds."""
    from harness.evaluation.runner import RunOptions, evaluate, prepare_tasks

    tasks_dir.mkdir(exist_ok=True)
    (tasks_dir / "mmlu_fixture.yaml").write_text(
        "group: mmlu_fixture\ntasks: [mmlu_abstract_algebra, mmlu_high_school_geography]\n"
    )
    specs, groups = resolve_tasks(names, [tasks_dir])
    prepared = prepare_tasks([spec.with_overrides(num_fewshot=1) for spec in specs], limit=None)
    return evaluate(HFBackend(gemma), prepared, cache, RunOptions(bootstrap_resamples=50), groups=groups)


def test_a_run_on_the_fixtures_gives_the_pinned_values(
    benchmark_cache: Path, gemma: Any, result_cache: Any, tmp_path: Path
) -> None:
    """The embedded Gemma (CPU, fp32) on ARC-Easy, WinoGrande and MMLU's two fixture subjects, one shot each.
    The per-choice log-probabilities were checked against lm-evaluation-harness 0.4.13 (bench/mc_parity.py)."""
    run = _run_benchmarks(gemma, result_cache, ["arc_easy", "winogrande", "mmlu_fixture"], tmp_path / "tasks")
    arc = run.tasks["arc_easy"]
    first = arc.samples[0]
    assert [c.text for c in first.choices] == PINNED["arc_choices"]
    assert [c.logprob for c in first.choices] == pytest.approx(PINNED["arc_logprobs"], rel=1e-4, abs=1e-4)
    assert [c.tokens for c in first.choices] == PINNED["arc_tokens"]
    values = {f"{task}/{key}": m.value for task, result in run.tasks.items() for key, m in result.metrics.items()}
    assert values == pytest.approx(PINNED["values"])
    mmlu = run.groups["mmlu_fixture"]
    subjects = ["mmlu_abstract_algebra", "mmlu_high_school_geography"]
    assert mmlu.tasks == subjects
    pooled = sum(run.tasks[s].metrics["acc"].value * run.tasks[s].n_samples for s in subjects) / 6
    assert mmlu.metrics["acc"].value == pytest.approx(pooled) and mmlu.n_samples == 6
    assert run.spec.tasks[0].data_revision == "0" * 40


PINNED: dict[str, Any] = {  # the embedded Gemma, CPU fp32, 2026-12-04
    "arc_choices": ["flower", "leaf", "root", "stem"],
    "arc_logprobs": [-8.49168, -5.89335, -1.07809, -5.6474],
    "arc_tokens": [1, 1, 1, 1],
    "values": {
        "arc_easy/acc": 1.0,
        "arc_easy/acc_norm": 2 / 3,
        "winogrande/acc": 2 / 3,
        "mmlu_abstract_algebra/acc": 0.0,
        "mmlu_high_school_geography/acc": 0.0,
    },
}


def test_a_micro_group_compares_over_its_pooled_samples(
    benchmark_cache: Path, gemma: Any, result_cache: Any, tmp_path: Path
) -> None:
    from harness.comparison.compare import compare_runs

    run = _run_benchmarks(gemma, result_cache, ["mmlu_fixture"], tmp_path / "tasks")  # served from no cache: fresh
    tasks = compare_runs([run, run]).comparisons[0].tasks
    group = tasks["mmlu_fixture"]
    assert group.n_shared == 6 and {s.id.split("/")[0] for s in group.samples} == set(run.groups["mmlu_fixture"].tasks)
    acc = next(m for m in group.metrics if m.metric == "acc")
    assert (
        acc.baseline == run.groups["mmlu_fixture"].metrics["acc"].value
        and acc.delta == 0
        and acc.test == "exact McNemar"
    )
