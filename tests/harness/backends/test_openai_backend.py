"""The openai backend against a real llama.cpp server (llama-cpp-python's) serving the embedded Gemma's GGUF, and
against a misbehaving stdlib HTTP server on 127.0.0.1 for the faults a real server will not produce on demand."""

from __future__ import annotations

import http.server
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.backends.api_client import Endpoint
from harness.backends.embedded import embedded_gguf_path
from harness.backends.gguf import GGUFBackend
from harness.backends.llama_server import LlamaServer, free_port, serve_gguf
from harness.backends.openai_backend import OpenAIBackend
from harness.backends.protocol import ContinuationScore, Prompt, RequestError, check_tasks
from harness.cli import app
from harness.core.cache import ResultCache
from harness.core.errors import HarnessError
from harness.core.taskspec import GenerationConfig
from harness.evaluation.catalog import get_tasks
from harness.evaluation.runner import RunOptions, evaluate, prepare_tasks
from tests.harness.evaluation.test_runner import QA_FIELDS, QA_ROWS, TEXT_ROWS
from tests.localhttp import send_json, serve, url_of

pytest.importorskip("llama_cpp.server")

SERVED = "gemma-3-270m"
PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Question: What is the capital of Japan?\nAnswer:",
    "The three primary colours are",
    "Once upon a time",
]


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The embedded Gemma's GGUF behind llama.cpp's OpenAI-compatible server (prompt log-probabilities on)."""
    log = tmp_path_factory.mktemp("gemma-server") / "server.log"
    with serve_gguf(embedded_gguf_path(), SERVED, log, n_ctx=1024, extra_args=["--logits_all", "true"]) as server:
        yield server


def backend_at(url: str, model: str = SERVED, **settings: Any) -> OpenAIBackend:
    return OpenAIBackend(Endpoint(model=model, base_url=url, **settings))


def test_greedy_outputs_agree_with_the_in_process_gguf_backend(gemma_server: LlamaServer) -> None:
    """The server decodes one sequence at a time, the in-process backend the whole batch together: llama.cpp's
    batched and single-row kernels round differently, so near-ties may go the other way (reported, not hidden)."""
    config = GenerationConfig(max_new_tokens=10, stop=["\n"])
    prompts = [Prompt(text) for text in PROMPTS]
    served = backend_at(gemma_server.base_url).generate(prompts, config)
    local = GGUFBackend("gemma-3-270m-gguf", n_ctx=1024).generate(prompts, config)
    agreement = sum(a == b for a, b in zip(served, local, strict=True)) / len(prompts)
    print(f"greedy agreement, served vs in process: {agreement:.0%}")
    assert agreement >= 0.5
    assert "Paris" in str(served[0]) and "Paris" in str(local[0])


def test_continuation_logprobs_follow_the_in_process_gguf_backend(gemma_server: LlamaServer) -> None:
    """Same file, same llama.cpp, but not the same arithmetic: the server keeps what its previous requests left in
    the KV cache and computes rows singly or in batches (llama.cpp's single-row and repacked batch kernels quantise
    activations to 8 bits differently), so the served value moves with what the server ran before. Measured:
    ' Paris' -0.852 and -0.779 served (two sessions) vs -0.883 in process; token counts, greedy flags and rankings
    always agree, and the values stay within 0.15 nats."""
    pairs = [(PROMPTS[0], " Paris"), (PROMPTS[0], " London"), ("The cat sat on the", " mat")]
    served = backend_at(gemma_server.base_url).loglikelihood(pairs, 8)
    local = GGUFBackend("gemma-3-270m-gguf", n_ctx=1024).loglikelihood(pairs, 8)
    for ours, theirs in zip(served, local, strict=True):
        assert isinstance(ours, ContinuationScore) and isinstance(theirs, ContinuationScore)
        assert ours.tokens == theirs.tokens
        assert ours.logprob == pytest.approx(theirs.logprob, abs=0.15)
        assert ours.greedy == theirs.greedy
    assert served[0].logprob > served[1].logprob  # type: ignore[union-attr]


def test_a_generate_and_a_perplexity_task_run_and_rerun_from_the_cache(
    gemma_server: LlamaServer, task_dir: Callable[..., Path], result_cache: ResultCache
) -> None:
    task_dir("qa", QA_ROWS, **QA_FIELDS)
    folder = task_dir("text", TEXT_ROWS, kind="perplexity", metrics=["perplexity"])
    prepared = prepare_tasks(get_tasks(["qa", "text"], [folder]), None)
    backend = backend_at(gemma_server.base_url, concurrency=4)
    first = evaluate(backend, prepared, result_cache, RunOptions(bootstrap_resamples=50))
    assert first.spec.model.backend == "openai" and first.spec.model.endpoint == gemma_server.base_url
    assert first.tasks["qa"].samples[0].output == "Paris"
    assert first.tasks["text"].metrics["perplexity"].value > 1
    assert first.tasks["qa"].n_errors == first.tasks["text"].n_errors == 0
    again = evaluate(backend, prepared, result_cache, RunOptions(bootstrap_resamples=50))
    assert again.tasks["qa"].n_cached == 3 and again.tasks["text"].n_cached == 2


def test_the_cli_runs_a_served_model_in_one_line(gemma_server: LlamaServer, task_dir: Callable[..., Path]) -> None:
    folder = task_dir("qa", QA_ROWS, **QA_FIELDS)
    out = folder.parent / "runs"
    args = ["run", "--model", f"openai:{SERVED}", "--base-url", gemma_server.base_url, "--tasks", "qa"]
    result = CliRunner().invoke(app, [*args, "--tasks-dir", str(folder), "--out", str(out), "--no-cache", "--json"])
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.stdout)["runs"]  # --json: one document on stdout, no tables
    assert summary["backend"] == "openai" and summary["tasks"]["qa"]["n_errors"] == 0
    record = json.loads(Path(summary["results"]).read_text())
    assert record["spec"]["model"]["name"] == f"openai:{SERVED}"
    assert "OPENAI_API_KEY" not in json.dumps(record)


def test_a_wrong_model_name_and_an_unreachable_url_fail_before_any_work(
    gemma_server: LlamaServer, task_dir: Callable[..., Path]
) -> None:
    specs = get_tasks(["qa"], [task_dir("qa", QA_ROWS, **QA_FIELDS)])
    with pytest.raises(HarnessError, match=rf"does not serve 'no-such-model'.*it serves: {SERVED}"):
        check_tasks(backend_at(gemma_server.base_url, model="no-such-model"), specs)
    with pytest.raises(HarnessError, match="cannot reach"):
        check_tasks(backend_at(f"http://127.0.0.1:{free_port()}/v1", max_retries=0), specs)


class FakeEndpoint:
    """A misbehaving OpenAI-compatible server: its model list answers with `models_status`; completions either
    lack log-probabilities, or fail with a 500 for a prompt holding CASE-500. `posts` counts completion requests."""

    def __init__(self, models_status: int = 200) -> None:
        self.models_status = models_status
        self.posts: Counter[str] = Counter()

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        prompt = str(body.get("prompt", ""))
        self.posts["CASE-500" if "CASE-500" in prompt else "ok"] += 1
        if "CASE-500" in prompt:
            return 500, {"error": {"message": "boom"}}
        choice = {"index": 0, "text": " Paris\n", "finish_reason": "stop", "logprobs": None}
        return 200, {"id": "c", "object": "text_completion", "created": 0, "model": "fake", "choices": [choice]}


@pytest.fixture
def fake_endpoint() -> Iterator[Callable[..., tuple[str, FakeEndpoint]]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(models_status: int = 200) -> tuple[str, FakeEndpoint]:
        state = FakeEndpoint(models_status)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if state.models_status != 200:
                    send_json(self, state.models_status, {"error": {"message": "Incorrect API key provided"}})
                else:
                    send_json(self, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                send_json(self, *state.reply(body))

        httpd = serve(Handler)
        servers.append(httpd)
        return url_of(httpd, "/v1"), state

    yield start
    for httpd in servers:
        httpd.shutdown()


def test_a_refused_key_and_a_server_without_logprobs_are_clear_errors(
    fake_endpoint: Callable[..., tuple[str, FakeEndpoint]], task_dir: Callable[..., Path]
) -> None:
    text = get_tasks(["text"], [task_dir("text", TEXT_ROWS, kind="perplexity", metrics=["perplexity"])])
    refusing, _ = fake_endpoint(models_status=401)
    with pytest.raises(HarnessError, match=r"refused the API key \(401\)"):
        check_tasks(backend_at(refusing, model="fake", max_retries=0), text)
    url, _ = fake_endpoint()
    with pytest.raises(HarnessError, match=r"returns no prompt log-probabilities.*--logits_all true"):
        check_tasks(backend_at(url, model="fake", max_retries=0), text)


def test_a_failing_request_is_a_per_sample_error_asked_again_next_run(
    fake_endpoint: Callable[..., tuple[str, FakeEndpoint]], task_dir: Callable[..., Path], result_cache: ResultCache
) -> None:
    rows = [*QA_ROWS[:2], {"id": "broken", "question": "CASE-500", "answer": ["x"]}]
    prepared = prepare_tasks(get_tasks(["qa"], [task_dir("qa", rows, **QA_FIELDS)]), None)
    url, state = fake_endpoint()
    backend = backend_at(url, model="fake", max_retries=0)
    first = evaluate(backend, prepared, result_cache, RunOptions(bootstrap_resamples=50)).tasks["qa"]
    broken = next(s for s in first.samples if s.id == "broken")
    assert first.n_errors == 1 and broken.scores == {} and "500" in str(broken.error)
    assert first.metrics["exact_match"].value == 0.5  # over the two answered samples: "Paris" is right once
    again = evaluate(backend, prepared, result_cache, RunOptions(bootstrap_resamples=50)).tasks["qa"]
    assert again.n_cached == 2 and again.n_errors == 1
    assert state.posts == {"ok": 2, "CASE-500": 2}  # answered ones from the cache, the failed one asked again
    assert isinstance(backend.generate([Prompt("CASE-500")], GenerationConfig())[0], RequestError)


@pytest.mark.parametrize(
    ("tokens", "offsets", "values"),
    [
        (["Hello", " world", "!"], [0, 5, 11], [None, -2.0, -0.5]),  # llama-cpp-python: no BOS echoed
        (["<bos>", "Hello", " world", "!"], [0, 5, 10, 16], [None, -1.0, -2.0, -0.5]),  # vLLM: BOS text counted
    ],
)
def test_echoed_offsets_split_the_prompt_at_the_context_whatever_the_server(
    tokens: list[str], offsets: list[int], values: list[float | None]
) -> None:
    from types import SimpleNamespace

    from harness.backends.openai_backend import _PromptLogprobs

    top = [None if v is None else {t: v} for t, v in zip(tokens, values, strict=True)]
    logprobs = SimpleNamespace(tokens=tokens, text_offset=offsets, token_logprobs=values, top_logprobs=top)
    echoed = _PromptLogprobs(SimpleNamespace(logprobs=logprobs), "Hello world")
    assert echoed.from_offset(len("Hello")) == ([-2.0], [True])  # " world" only: not the generated "!"
