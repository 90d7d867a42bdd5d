"""The `openai` backend: a model served behind an OpenAI-compatible endpoint (vLLM, llama.cpp's server, TGI, a
hosted API), through the shared client layer (harness.backends.api_client). `--model openai:MODEL --base-url URL`.

- generate: a task with `chat_template` goes through chat completions (the server applies its template), any other
  through completions with the prompt as written.
- loglikelihood and perplexity: completions with `echo` and `logprobs`, which return the prompt's tokens with
  their log-probabilities and character offsets (vLLM and llama.cpp's server do; llama-cpp-python's only when
  started with `--logits_all true`). A continuation's tokens are those starting at or after its context's end;
  greedy means each is the top-1 of its position. A text is scored whole: rolling windows need the server's
  tokens, which the API does not give, so a text longer than the server's context fails with the server's reason.
  llama-cpp-python's server gives no log-probability for a text's first token: it is not counted.

Before any work the endpoint is checked once: reachable, the key accepted, the model among those it serves, and,
for tasks that need them, prompt log-probabilities actually returned; each failure is one clear error. A request
that fails mid-run is a per-sample RequestError with its reason (redacted of the key); the run completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from harness.backends.api_client import Endpoint, ReplyError, first_choice, gather_bounded, request_failure
from harness.backends.hf_loglikelihood import split_whitespace
from harness.backends.protocol import (
    Continuation,
    ContinuationScore,
    Generation,
    Prompt,
    RequestError,
    Rolling,
    ready,
)
from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_json
from harness.core.record import ModelRunSpec
from harness.core.registry import SampleStats
from harness.core.taskspec import GenerationConfig, TaskSpec, Windows

OPENAI_PREFIX = "openai:"
SCORING_KINDS = ("perplexity", "multiple_choice", "loglikelihood")
IN_FLIGHT_BATCHES = 4  # a batch holds this many times the concurrency, so requests stay in flight across a batch
T = TypeVar("T")


class _PromptLogprobs:
    """The echoed prompt's tokens of a completions reply: character offsets into the prompt and log-probabilities
    (None for a token the server gives none), and whether each token is its position's top-1.

    Servers differ in what they echo: llama-cpp-python leaves the BOS token out, vLLM keeps it with its text
    ("<bos>") counted in the offsets. Where the tokens' texts spell the prompt after such a prefix, offsets are
    moved back by its length, and the prefix's own tokens are dropped."""

    def __init__(self, choice: Any, prompt: str) -> None:
        logprobs = getattr(choice, "logprobs", None)
        offsets = getattr(logprobs, "text_offset", None)
        values = getattr(logprobs, "token_logprobs", None)
        if not offsets or values is None:
            raise ReplyError("the reply has no prompt log-probabilities (echo with logprobs)")
        texts = list(getattr(logprobs, "tokens", None) or [])
        top = getattr(logprobs, "top_logprobs", None) or [None] * len(values)
        spelled = "".join(texts[:-1])  # the prompt's tokens: all but the one generated token
        shift = len(spelled) - len(prompt) if len(spelled) > len(prompt) and spelled.endswith(prompt) else 0
        kept = [
            (o - shift, v, t) for o, v, t in zip(offsets, values, top, strict=False) if 0 <= o - shift < len(prompt)
        ]
        self.offsets = [o for o, _, _ in kept]
        self.values = [v for _, v, _ in kept]
        self.greedy = [v is not None and (not t or v >= max(t.values()) - 1e-6) for _, v, t in kept]

    def from_offset(self, start: int) -> tuple[list[float | None], list[bool]]:
        picked = [i for i, offset in enumerate(self.offsets) if offset >= start]
        return [self.values[i] for i in picked], [self.greedy[i] for i in picked]


class OpenAIBackend:
    kinds = frozenset({"generate", "perplexity", "multiple_choice", "loglikelihood"})

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._served: dict[str, Any] | None = None  # the model's entry in the server's model list
        self._logprobs_checked = False

    # -- checks before any work ------------------------------------------------------------------------------

    def _run(self, make: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        async def go() -> T:
            async with self.endpoint.client() as client:
                return await make(client)

        return asyncio.run(go())

    def _served_entry(self) -> dict[str, Any]:
        """The served model's entry in GET /models: checks reach, key and model name once, each a clear error."""
        if self._served is not None:
            return self._served
        import openai

        where = f"the endpoint {self.endpoint.base_url}"
        try:
            models = self._run(lambda client: client.models.list())
        except openai.AuthenticationError:
            raise HarnessError(
                f"{where} refused the API key (401)",
                field="--api-key-env",
                hint=f"the key is read from ${self.endpoint.api_key_env}",
            ) from None
        except openai.APIConnectionError as error:
            raise HarnessError(f"cannot reach {where}: {error.__cause__ or error}", field="--base-url") from None
        except (openai.APIError, ValueError) as error:
            raise HarnessError(f"{where} did not list its models: {request_failure(self.endpoint, error)}") from None
        entries = {entry.id: entry.model_dump(exclude={"created"}) for entry in getattr(models, "data", None) or []}
        if self.endpoint.model not in entries:
            raise HarnessError(
                f"{where} does not serve '{self.endpoint.model}'",
                field="--model",
                hint=f"it serves: {', '.join(sorted(entries)) or 'nothing it lists'}",
            )
        self._served = entries[self.endpoint.model]
        return self._served

    def _check_logprobs(self) -> str | None:
        """Whether the server echoes prompt log-probabilities (one tiny request, once)."""
        try:
            self._run(lambda client: self._echo(client, "Hello world"))
        except Exception as error:  # any failure of the probe means: not served
            reason = request_failure(self.endpoint, error)
            return (
                f"at {self.endpoint.base_url} returns no prompt log-probabilities ({reason}),"
                " which perplexity and log-likelihood tasks need (vLLM returns them; llama-cpp-python's server when"
                " started with --logits_all true)"
            )
        self._logprobs_checked = True
        return None

    @property
    def fingerprint(self) -> str:
        return hash_json({"base_url": self.endpoint.base_url, "model": self._served_entry()})

    @property
    def label(self) -> str:
        return f"{OPENAI_PREFIX}{self.endpoint.model}"

    def describe(self) -> ModelRunSpec:
        return ModelRunSpec(
            name=self.label,
            checkpoint=self.endpoint.model,
            fingerprint=self.fingerprint,
            base_fingerprint=hash_json(self._served_entry()),
            backend="openai",
            endpoint=self.endpoint.base_url,
        )

    def unsupported(self, spec: TaskSpec) -> str | None:
        self._served_entry()
        if spec.kind in SCORING_KINDS:
            if spec.chat_template and spec.kind != "perplexity":
                return "scores log-likelihoods through completions, where no chat template applies (chat_template)"
            if not self._logprobs_checked:
                return self._check_logprobs()
        return None

    def model_input(self, prompt: Prompt) -> str:
        if not prompt.chat:
            return prompt.text
        return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt.messages())

    def batch_size(self, requested: int) -> int:
        return max(requested, self.endpoint.concurrency * IN_FLIGHT_BATCHES)

    # -- requests --------------------------------------------------------------------------------------------

    def _gather(self, jobs: Callable[[Any], list[Coroutine[Any, Any, T]]]) -> list[T | RequestError]:
        import openai

        async def guarded(job: Coroutine[Any, Any, T]) -> T | RequestError:
            try:
                return await job
            except (openai.APIError, ReplyError, ValueError) as error:  # ValueError: a JSON body cut short
                return RequestError(request_failure(self.endpoint, error))

        async def run(client: Any) -> list[T | RequestError]:
            return await gather_bounded([guarded(job) for job in jobs(client)], self.endpoint.concurrency)

        return self._run(run)

    async def _generate_one(self, client: Any, prompt: Prompt, config: GenerationConfig) -> str:
        settings: dict[str, Any] = {
            "model": self.endpoint.model,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "stop": config.stop[:4] or None,  # the API takes at most four
        }
        if config.temperature > 0:
            settings |= {"top_p": config.top_p, "seed": config.seed}
        if prompt.chat:
            response = await client.chat.completions.create(messages=prompt.messages(), **settings)
            text = getattr(first_choice(response, "chat completion").message, "content", None) or ""
        else:
            response = await client.completions.create(prompt=prompt.text, **settings)
            text = getattr(first_choice(response, "completion"), "text", None) or ""
        cut = min((text.find(s) for s in config.stop if s in text), default=len(text))
        return text[:cut].strip()

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[Generation]:
        return self._gather(lambda client: [self._generate_one(client, p, config) for p in prompts])

    async def _echo(self, client: Any, text: str) -> _PromptLogprobs:
        response = await client.completions.create(
            model=self.endpoint.model, prompt=text, echo=True, logprobs=1, max_tokens=1, temperature=0.0
        )
        return _PromptLogprobs(first_choice(response, "completion"), text)

    async def _continuation(self, client: Any, context: str, continuation: str) -> ContinuationScore:
        context, continuation = split_whitespace(context, continuation)
        echoed = await self._echo(client, context + continuation)
        values, greedy = echoed.from_offset(len(context))
        if not values or any(v is None for v in values):
            raise ReplyError(f"no log-probability for the continuation {continuation!r}")
        return ContinuationScore(sum(v for v in values if v is not None), len(values), all(greedy))

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[Continuation]:
        return self._gather(lambda client: [self._continuation(client, c, x) for c, x in pairs])

    async def _rolling(self, client: Any, text: str) -> SampleStats:
        values, _ = (await self._echo(client, text)).from_offset(0)
        scored = [v for v in values if v is not None]
        return SampleStats(nll=-sum(scored), tokens=len(scored), bytes=len(text.encode("utf-8")))

    def loglikelihood_rolling(
        self, texts: Sequence[str], max_length: int, stride: int, batch_size: int, windows: Windows = "strided"
    ) -> Callable[[], list[Rolling]]:
        return ready(self._gather(lambda client: [self._rolling(client, text) for text in texts]))


def openai_model_name(name: str) -> str:
    model = name.removeprefix(OPENAI_PREFIX)
    if not model:
        raise HarnessError("openai: needs the served model's name, e.g. openai:gpt-4o-mini", field="--model")
    return model
