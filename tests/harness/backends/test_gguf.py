"""The gguf backend on the embedded Gemma's own GGUF, run by llama.cpp in process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from harness.backends.gguf import GGUFBackend
from harness.backends.hf import LoadedModel
from harness.backends.hf_backend import HFBackend
from harness.backends.hf_loglikelihood import encode_pairs
from harness.backends.protocol import ContinuationScore, Prompt, RequestError
from harness.core.cache import ResultCache
from harness.core.errors import HarnessError
from harness.core.taskspec import GenerationConfig
from harness.evaluation.catalog import get_tasks
from harness.evaluation.runner import RunOptions, evaluate, prepare_tasks
from tests.harness.evaluation.test_runner import QA_FIELDS, QA_ROWS, TEXT_ROWS

pytest.importorskip("llama_cpp")

PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("Question: What is the capital of France?\nAnswer:", " London"),
    ("Question: What is the capital of France?\nAnswer: ", "Lyon and Marseille"),
    ("The cat sat on the", " mat"),
    ("", "Hello there"),
]


@pytest.fixture(scope="module")
def gguf() -> Iterator[GGUFBackend]:
    backend = GGUFBackend("gemma-3-270m-gguf", n_ctx=1024)
    yield backend
    backend.llm.close()


def _full_logits_reference(backend: GGUFBackend, tokens: list[int], score_from: int) -> list[float]:
    """Each scored token's log-probability from llama.cpp's logits at every position of one fresh evaluation (no
    prefix kept, no positions skipped): what the selective path must reproduce."""
    from llama_cpp import Llama

    llm = Llama(str(backend.path), n_ctx=1024, logits_all=True, verbose=False, n_threads=backend.threads)
    try:
        llm.eval(tokens)
        logprobs = torch.from_numpy(llm.scores[: len(tokens) - 1]).log_softmax(-1)
        return [float(logprobs[i - 1, tokens[i]]) for i in range(score_from, len(tokens))]
    finally:
        llm.close()


def test_selective_logits_and_kept_prefix_equal_a_full_evaluation(gguf: GGUFBackend) -> None:
    encoded = encode_pairs(gguf.tokenizer, PAIRS)
    scores = gguf.loglikelihood(PAIRS, batch_size=8)  # the choices share their context: the prefix is kept
    for (context, continuation), score in zip(encoded, scores, strict=True):
        assert isinstance(score, ContinuationScore)
        reference = _full_logits_reference(gguf, context + continuation, len(context))
        assert score.tokens == len(continuation)
        assert score.logprob == pytest.approx(sum(reference), rel=1e-4, abs=1e-4)
    assert scores[0].logprob > scores[1].logprob  # Paris over London
    assert scores[0].greedy and not scores[1].greedy


def test_scores_follow_the_transformers_backend_on_the_same_weights(gguf: GGUFBackend, gemma: LoadedModel) -> None:
    """llama.cpp multiplies the Q4_K weights with 8-bit-quantised activations; the transformers checkpoint holds
    the same weights dequantised to float32. Measured on this text: 3.5% apart in summed NLL (BENCHMARKS.md)."""
    text = "The quick brown fox jumps over the lazy dog. " * 6
    ours = gguf.loglikelihood_rolling([text], 1024, 512, 8)()[0]
    hf = HFBackend(gemma).loglikelihood_rolling([text], 1024, 512, 8)()[0]
    assert not isinstance(ours, RequestError) and not isinstance(hf, RequestError)
    assert ours.tokens == hf.tokens
    assert ours.nll == pytest.approx(hf.nll, rel=0.08)
    choices = gguf.loglikelihood(PAIRS[:2], 8)
    assert all(isinstance(c, ContinuationScore) for c in choices)


def test_rolling_windows_score_every_token_once(gguf: GGUFBackend) -> None:
    text = "Glaciers move slowly but relentlessly across the valley floor. " * 4
    whole = gguf.loglikelihood_rolling([text], 512, 512, 8)()[0]
    windowed = gguf.loglikelihood_rolling([text], 24, 12, 8)()[0]
    assert not isinstance(whole, RequestError) and not isinstance(windowed, RequestError)
    assert whole.tokens == windowed.tokens
    assert windowed.nll > whole.nll * 0.9  # less left context per token: not lower than with all of it, roughly


def test_greedy_generation_is_deterministic_and_stops(gguf: GGUFBackend) -> None:
    config = GenerationConfig(max_new_tokens=12, stop=["\n"])
    prompts = [Prompt("Question: What is the capital of France?\nAnswer:"), Prompt("Name a colour.", chat=True)]
    first, second = gguf.generate(prompts, config), gguf.generate(prompts, config)
    assert first == second
    assert isinstance(first[0], str) and "Paris" in first[0] and "\n" not in first[0]
    assert gguf.model_input(prompts[1]).startswith("<bos><start_of_turn>user\nName a colour.")


def test_too_long_a_request_is_a_per_sample_error(gguf: GGUFBackend) -> None:
    long_pair = ("word " * 1100, " end")
    scores = gguf.loglikelihood([long_pair, PAIRS[3]], 8)
    assert isinstance(scores[0], RequestError) and "n_ctx" in scores[0].reason
    assert isinstance(scores[1], ContinuationScore)


def test_a_generate_and_a_perplexity_task_run_through_the_runner(
    gguf: GGUFBackend, task_dir: Callable[..., Path], result_cache: ResultCache
) -> None:
    task_dir("qa", QA_ROWS, **QA_FIELDS)
    folder = task_dir("text", TEXT_ROWS, kind="perplexity", metrics=["perplexity"])
    prepared = prepare_tasks(get_tasks(["qa", "text"], [folder]), None)
    first = evaluate(gguf, prepared, result_cache, RunOptions(bootstrap_resamples=50))
    assert first.spec.model.backend == "gguf"
    assert first.tasks["qa"].samples[0].output == "Paris"
    assert first.tasks["text"].metrics["perplexity"].value > 1
    again = evaluate(gguf, prepared, result_cache, RunOptions(bootstrap_resamples=50))
    assert again.tasks["qa"].n_cached == 3 and again.tasks["text"].n_cached == 2
    assert again.tasks["text"].metrics["perplexity"].value == first.tasks["text"].metrics["perplexity"].value


def test_a_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no such GGUF file"):
        GGUFBackend(f"gguf:{tmp_path / 'nothing.gguf'}")
