"""The registry: decorators, YAML discovery on a search path, user task folders with Python tasks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import metric
from harness.core.errors import HarnessError
from harness.evaluation.catalog import find_tasks, get_tasks
from harness.metrics import all_metrics, get_metric


def test_builtin_tasks_are_found_and_sized_for_the_issue() -> None:
    from harness.core.data import read_rows

    tasks = find_tasks()
    assert {"general_english", "factual_qa", "plain_english"} <= set(tasks)
    for spec in tasks.values():
        if (
            spec.data is not None
        ):  # the standard benchmarks read hub datasets (tests/harness/evaluation/test_benchmarks)
            assert 30 <= len(read_rows(spec.data)) <= 200, spec.name


def test_builtin_metrics_are_registered_with_direction() -> None:
    metrics = all_metrics()
    generate = {"exact_match", "f1", "bleu", "chrf", "rouge"}
    multiple_choice = {"acc", "acc_norm", "acc_mutual_info", "mc2"}
    assert {(name, "generate") for name in generate} | {(name, "multiple_choice") for name in multiple_choice} <= set(
        metrics
    )
    assert {("perplexity", "perplexity"), ("acc", "loglikelihood"), ("perplexity", "loglikelihood")} <= set(metrics)
    assert metrics["perplexity", "perplexity"].higher_is_better is False
    assert metrics["perplexity", "loglikelihood"].higher_is_better is False
    assert metrics["bleu", "generate"].higher_is_better is True and metrics["acc", "multiple_choice"].higher_is_better
    assert metrics["rouge", "generate"].keys == ("rouge1", "rouge2", "rougeL", "rougeLsum")


def test_metric_decorator_registers_a_mean_metric() -> None:
    @metric("test_length_ratio", description="prediction length over reference length")
    def length_ratio(prediction: str, references: list[str], floor: int = 1) -> float:
        return len(prediction) / max(floor, len(references[0]))

    registered = get_metric("test_length_ratio")
    scores = [registered.score({}, "ab", ["abcd"]), registered.score({}, "abcd", ["abcd"])]
    rows = registered.sufficient_stats({}, scores, [], [])
    assert registered.corpus_value({}, [sum(column) for column in zip(*rows, strict=True)]) == {
        "test_length_ratio": 0.75
    }
    assert registered.option_names() == ["floor"]


def test_user_folder_with_yaml_and_python_task(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"q": "2+2?", "a": "4"}\n')
    (tmp_path / "yaml_task.yaml").write_text(
        "kind: generate\ndata: rows.jsonl\ntemplate: '{{ q }}'\nreference_field: a\nmetrics: [exact_match]\n"
    )
    (tmp_path / "python_tasks.py").write_text(
        "from pathlib import Path\n"
        "from harness import TaskSpec, task\n\n"
        "@task('python_task')\n"
        "def python_task() -> TaskSpec:\n"
        "    return TaskSpec(name='python_task', kind='perplexity', data=Path(__file__).parent / 'rows.jsonl',\n"
        "                    template='{{ q }} {{ a }}', metrics=[{'name': 'perplexity'}])\n"
    )
    yaml_task, python_task = get_tasks(["yaml_task", "python_task"], [tmp_path])
    assert yaml_task.data == tmp_path / "rows.jsonl" and yaml_task.source == tmp_path / "yaml_task.yaml"
    assert python_task.kind == "perplexity"


def test_missing_tasks_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="task folder does not exist"):
        find_tasks([tmp_path / "nope"])


def test_a_task_folders_metric_survives_a_second_lookup(tmp_path: Path) -> None:
    """A task folder's Python module runs once per process: looking tasks up twice (training checks leakage, then
    evaluation scores) must not register its @metric twice."""
    (tmp_path / "my_metrics.py").write_text(
        "from harness import metric\n\n"
        "@metric('test_twice_len')\n"
        "def length(prediction: str, references: list[str]) -> float:\n"
        "    return float(len(prediction))\n"
    )
    find_tasks([tmp_path])
    find_tasks([tmp_path])
    assert get_metric("test_twice_len").score({}, "abc", ["x"]) == {"test_twice_len": 3.0}


def test_a_tasks_folder_in_the_working_directory_does_not_hide_the_builtin_tasks(tmp_path: Path) -> None:
    """`python -m harness` (and torchrun -m harness) puts the working directory first on sys.path, where a user's own
    `tasks/` folder would shadow the built-in `tasks` package: a real process in such a folder lists the built-ins."""
    (tmp_path / "tasks").mkdir()
    listing = subprocess.run(
        [sys.executable, "-m", "harness", "tasks"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "factual_qa" in listing.stdout and "general_english" in listing.stdout
