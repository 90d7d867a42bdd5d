"""The runner on the real embedded Gemma: records, cache hits, greedy generation, chat template."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.backends.hf import LoadedModel
from harness.backends.hf_backend import HFBackend
from harness.core.cache import ResultCache
from harness.core.record import RunResult
from harness.evaluation.catalog import get_tasks
from harness.evaluation.runner import RunOptions, evaluate, prepare_tasks

QA_ROWS = [
    {"id": "france", "question": "What is the capital of France?", "answer": ["Paris"]},
    {"id": "japan", "question": "What is the capital of Japan?", "answer": ["Tokyo"]},
    {"id": "spider", "question": "How many legs does a spider have?", "answer": ["eight", "8"]},
]
QA_FIELDS = {
    "kind": "generate",
    "template": "Question: {{ question }}\nAnswer:",
    "reference_field": "answer",
    "id_field": "id",
    "fewshot": [{"question": "What is the capital of Portugal?", "answer": "Lisbon"}],
    "metrics": ["exact_match", "f1"],
    "generation": {"max_new_tokens": 6, "stop": ["\n"]},
}
TEXT_ROWS = [{"text": "The library opened at nine."}, {"text": "Glaciers move slowly but relentlessly."}]


@pytest.fixture
def qa_and_text_tasks(task_dir: Callable[..., Path]) -> Path:
    task_dir("qa", QA_ROWS, **QA_FIELDS)
    return task_dir("text", TEXT_ROWS, kind="perplexity", metrics=["perplexity"])


def run_tasks(gemma: LoadedModel, folder: Path, cache: ResultCache, names: list[str], **options: object) -> RunResult:
    specs = get_tasks(names, [folder])
    run_options = RunOptions(bootstrap_resamples=200, **options)  # type: ignore[arg-type]
    return evaluate(HFBackend(gemma), prepare_tasks(specs, run_options.limit), cache, run_options)


def test_run_scores_and_serves_identical_rerun_from_cache(
    gemma: LoadedModel, qa_and_text_tasks: Path, result_cache: ResultCache, tmp_path: Path
) -> None:
    first = run_tasks(gemma, qa_and_text_tasks, result_cache, ["qa", "text"])
    qa = first.tasks["qa"]
    assert qa.n_cached == 0
    assert [s.id for s in qa.samples] == ["france", "japan", "spider"]
    assert qa.samples[0].output == "Paris"  # greedy, stopped at the newline
    assert qa.samples[0].prompt.startswith("Question: What is the capital of Portugal?\nAnswer: Lisbon\n\n")
    assert qa.metrics["exact_match"].value == pytest.approx(sum(s.scores["exact_match"] for s in qa.samples) / 3)
    assert qa.metrics["exact_match"].higher_is_better is True
    text = first.tasks["text"]
    assert text.metrics["perplexity"].higher_is_better is False
    assert text.metrics["token_count"].higher_is_better is None
    assert text.metrics["perplexity"].stderr is not None

    second = run_tasks(gemma, qa_and_text_tasks, result_cache, ["qa", "text"])
    assert second.tasks["qa"].n_cached == 3 and second.tasks["text"].n_cached == 2
    for name in ("qa", "text"):
        assert second.tasks[name].metrics == first.tasks[name].metrics
        assert [s.scores for s in second.tasks[name].samples] == [s.scores for s in first.tasks[name].samples]

    path = first.write(tmp_path / "run" / "results.json")
    assert RunResult.read(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left behind


def test_changed_decoding_settings_miss_the_cache(
    gemma: LoadedModel, task_dir: Callable[..., Path], result_cache: ResultCache
) -> None:
    folder = task_dir("qa", QA_ROWS[:1], **QA_FIELDS)
    run_tasks(gemma, folder, result_cache, ["qa"])
    task_dir("qa", QA_ROWS[:1], **{**QA_FIELDS, "generation": {"max_new_tokens": 5, "stop": ["\n"]}})
    assert run_tasks(gemma, folder, result_cache, ["qa"]).tasks["qa"].n_cached == 0
    task_dir("qa", QA_ROWS[:1], **{**QA_FIELDS, "metrics": ["f1"]})  # metrics alone don't touch model outputs
    assert run_tasks(gemma, folder, result_cache, ["qa"]).tasks["qa"].n_cached == 1


def test_greedy_outputs_do_not_depend_on_batch_size(
    gemma: LoadedModel, task_dir: Callable[..., Path], tmp_path: Path
) -> None:
    folder = task_dir("qa", QA_ROWS, **QA_FIELDS)
    outputs = []
    for batch_size in (1, 3):
        cache = ResultCache(None)
        result = run_tasks(gemma, folder, cache, ["qa"], batch_size=batch_size)
        outputs.append([s.output for s in result.tasks["qa"].samples])
    assert outputs[0] == outputs[1]


def test_seeded_sampling_is_reproducible(gemma: LoadedModel, task_dir: Callable[..., Path]) -> None:
    sampled = {**QA_FIELDS, "generation": {"max_new_tokens": 6, "temperature": 1.0, "top_k": 50, "seed": 7}}
    folder = task_dir("qa", QA_ROWS[:2], **sampled)
    first = run_tasks(gemma, folder, ResultCache(None), ["qa"])
    second = run_tasks(gemma, folder, ResultCache(None), ["qa"])
    assert [s.output for s in first.tasks["qa"].samples] == [s.output for s in second.tasks["qa"].samples]


def test_chat_template_has_one_bos_and_gemma_turns(gemma: LoadedModel, task_dir: Callable[..., Path]) -> None:
    folder = task_dir("qa", QA_ROWS[:1], **{**QA_FIELDS, "fewshot": [], "chat_template": True})
    result = run_tasks(gemma, folder, ResultCache(None), ["qa"])
    prompt = result.tasks["qa"].samples[0].prompt
    assert prompt == (
        "<bos><start_of_turn>user\nQuestion: What is the capital of France?\nAnswer:<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    encoded = gemma.tokenizer(prompt, add_special_tokens=False).input_ids
    assert encoded.count(gemma.tokenizer.bos_token_id) == 1


def test_limit_and_run_spec(gemma: LoadedModel, qa_and_text_tasks: Path, result_cache: ResultCache) -> None:
    result = run_tasks(gemma, qa_and_text_tasks, result_cache, ["qa"], limit=2)
    assert result.tasks["qa"].n_samples == 2
    spec = result.spec
    assert spec.limit == 2 and spec.model.name == "gemma-3-270m" and spec.model.dtype == "float32"
    assert spec.model.fingerprint == gemma.fingerprint and len(spec.tasks[0].data_fingerprint) == 64
    assert spec.tasks[0].config["generation"]["max_new_tokens"] == 6


def test_a_failing_batch_still_caches_the_batch_in_flight(
    gemma: LoadedModel, qa_and_text_tasks: Path, result_cache: ResultCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Perplexity keeps one batch queued on the device while the next is started. Starting the second batch is made
    to fail (a patched hf_requests.queue_rolling, since a real model gives no reliable way to fail one batch): the
    first batch, real model output not yet read back, must still reach the cache."""
    from harness.backends import hf_requests

    real_queue, calls = hf_requests.queue_rolling, []

    def fail_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory while queuing the second batch")
        return real_queue(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hf_requests, "queue_rolling", fail_second)
    with pytest.raises(RuntimeError, match="second batch"):
        run_tasks(gemma, qa_and_text_tasks, result_cache, ["text"], batch_size=1)
    monkeypatch.setattr(hf_requests, "queue_rolling", real_queue)
    rerun = run_tasks(gemma, qa_and_text_tasks, result_cache, ["text"], batch_size=1)
    assert rerun.tasks["text"].n_cached == 1
    assert len(calls) == 2
