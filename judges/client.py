"""The judge client: the OpenAI SDK (`AsyncOpenAI`) against any OpenAI-compatible base URL.

Retries with backoff (honouring Retry-After on 429) on 429, 5xx, timeouts and connection errors are the SDK's
own (`max_retries`); each attempt must have its whole reply within the timeout (a deadline, not httpx's per-read
timeout, which a server trickling bytes never meets); concurrency is bounded by a semaphore. A reply that is no
chat completion (no choices, an error object, an HTML page, truncated JSON) is a per-sample error with its
reason, like a failed call. Only successful judgments are cached in SQLite: a re-run makes no calls for them and
asks again for every error, so a judge that was down or broken is not remembered as such. The API key is read
from an environment variable and goes nowhere but the Authorization header.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from harness.core.cache import ResultCache
from judges.parse import JudgeParseError

T = TypeVar("T")

# Strings shaped like API keys and bearer tokens, redacted from stored error text whatever the key's variable holds.
KEY_SHAPED = re.compile(r"\b(?:sk|pk|rk|hf|gsk|xai)[-_][A-Za-z0-9_-]{12,}|(?<=Bearer )[A-Za-z0-9._~+/=-]{8,}")
MIN_SECRET_LENGTH = 8
REPLY_EXCERPT = 200  # characters of a malformed reply kept in its error


class JudgeReplyError(Exception):
    """The endpoint answered, but not with a chat completion."""


class _DeadlineTransport(httpx.AsyncBaseTransport):
    """httpx's transport with a deadline on each whole attempt, headers and body: httpx's own timeouts are per read,
    so a server that trickles bytes could hold a judgment for as long as it liked. A missed deadline is a read
    timeout, which the SDK retries like any other."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async def whole_reply() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            try:
                body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            finally:
                await response.aclose()
            return httpx.Response(
                response.status_code, headers=response.headers, stream=httpx.ByteStream(body), request=request
            )

        try:
            return await asyncio.wait_for(whole_reply(), self.seconds)
        except asyncio.TimeoutError:
            raise httpx.ReadTimeout(f"no whole reply within {self.seconds:g} s", request=request) from None

    async def aclose(self) -> None:
        await self.inner.aclose()


REASK = "Your previous answer was not valid ({error}). Reply again with only the JSON object, in the shape asked for."


class JudgeEndpoint(BaseModel):
    """Where and how to call the judge. The key itself is never stored: only the variable's name."""

    model: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    max_retries: int = 3
    concurrency: int = 4
    temperature: float = 0.0
    max_tokens: int = 256
    logprobs: bool = True
    identity: str | None = None  # what keys the cache instead of base_url (the local judge's port changes)


@dataclass
class Judgment(Generic[T]):
    value: T | None
    raw: str = ""
    error: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False


class JudgeClient:
    """Sends judge requests; `calls` counts requests made (a cached judgment makes none)."""

    def __init__(self, endpoint: JudgeEndpoint, cache: ResultCache) -> None:
        self.endpoint = endpoint
        self.cache = cache
        self.calls = 0

    def _client(self) -> Any:
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        return AsyncOpenAI(
            base_url=self.endpoint.base_url,
            api_key=os.environ.get(self.endpoint.api_key_env) or "not-set",
            timeout=self.endpoint.timeout,
            max_retries=self.endpoint.max_retries,
            http_client=DefaultAsyncHttpxClient(transport=_DeadlineTransport(self.endpoint.timeout)),
        )

    def _redact(self, text: str) -> str:
        """Error text without the API key: an endpoint may echo it back ("Incorrect API key provided: sk-..."), and
        the error goes into results.json."""
        key = os.environ.get(self.endpoint.api_key_env) or ""
        if len(key) >= MIN_SECRET_LENGTH:
            text = text.replace(key, "[redacted]")
        return KEY_SHAPED.sub("[redacted]", text)

    def _request(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": messages,
            "temperature": self.endpoint.temperature,
            "max_tokens": self.endpoint.max_tokens,
            "response_format": {"type": "json_object", "schema": schema},
        }
        if self.endpoint.logprobs:
            request.update(logprobs=True, top_logprobs=5)
        return request

    async def _complete(self, client: Any, request: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        self.calls += 1
        try:
            response = await client.chat.completions.create(**request)
        except ValueError as error:  # a JSON body cut short
            raise JudgeReplyError(f"the reply is not valid JSON ({error})") from None
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            excerpt = response if isinstance(response, str) else str(response.model_dump(exclude_none=True))
            raise JudgeReplyError(f"the reply is not a chat completion: {excerpt[:REPLY_EXCERPT]!r}")
        choice = choices[0]
        content = choice.message.content or ""
        logprobs = [token.model_dump() for token in (choice.logprobs.content or [])] if choice.logprobs else []
        return content, logprobs

    async def _judge_one(
        self, client: Any, semaphore: asyncio.Semaphore, request: dict[str, Any], parse: Callable[[str], T]
    ) -> Judgment[T]:
        from openai import APIError

        key = ResultCache.key(kind="judge", judge=self.endpoint.identity or self.endpoint.base_url, request=request)
        found = self.cache.get_many([key]).get(key)
        if found is not None and found["error"] is None:  # an error an older version cached is asked again
            return Judgment(
                value=found["value"], raw=found["raw"], error=found["error"], logprobs=found["logprobs"], cached=True
            )
        async with semaphore:
            try:
                raw, logprobs = await self._complete(client, request)
                try:
                    judgment = Judgment(value=parse(raw), raw=raw, logprobs=logprobs)
                except JudgeParseError as first_error:
                    reask = {
                        **request,
                        "messages": [
                            *request["messages"],
                            {"role": "assistant", "content": raw},
                            {"role": "user", "content": REASK.format(error=first_error)},
                        ],
                    }
                    raw, logprobs = await self._complete(client, reask)
                    try:
                        judgment = Judgment(value=parse(raw), raw=raw, logprobs=logprobs)
                    except JudgeParseError as error:
                        judgment = Judgment(value=None, raw=raw, error=f"unparseable after a re-ask: {error}")
            except (APIError, JudgeReplyError) as error:
                return Judgment(value=None, error=self._redact(f"{type(error).__name__}: {error}"))
        if judgment.error is not None:
            return judgment
        self.cache.put_many(
            {
                key: {
                    "value": judgment.value,
                    "raw": judgment.raw,
                    "error": judgment.error,
                    "logprobs": judgment.logprobs,
                }
            }
        )
        return judgment

    def judge_all(
        self, requests: Sequence[tuple[list[dict[str, str]], dict[str, Any]]], parse: Callable[[str], T]
    ) -> list[Judgment[T]]:
        """Judge (messages, schema) pairs concurrently, in order; failures are Judgments with an error."""

        async def run() -> list[Judgment[T]]:
            semaphore = asyncio.Semaphore(self.endpoint.concurrency)
            async with self._client() as client:
                jobs = [self._judge_one(client, semaphore, self._request(m, s), parse) for m, s in requests]
                return list(await asyncio.gather(*jobs))

        return asyncio.run(run())
