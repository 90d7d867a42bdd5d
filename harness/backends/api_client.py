"""The one client layer for OpenAI-compatible endpoints, shared by the judges and the `openai` model backend.

The OpenAI SDK (`AsyncOpenAI`) against any base URL: retries with backoff (honouring Retry-After on 429) on 429,
5xx, timeouts and connection errors are the SDK's own (`max_retries`); each attempt must have its whole reply
within the timeout (a deadline, not httpx's per-read timeout, which a server trickling bytes never meets);
concurrency is bounded by a semaphore (`gather_bounded`). A reply that is not what was asked for (no choices, an
error object, an HTML page, truncated JSON) is a `ReplyError` the callers record per sample, like a failed call.
The API key is read from an environment variable named by the endpoint and goes nowhere but the Authorization
header; error text is redacted before anyone stores it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

# Strings shaped like API keys and bearer tokens, redacted from stored error text whatever the key's variable holds.
KEY_SHAPED = re.compile(r"\b(?:sk|pk|rk|hf|gsk|xai)[-_][A-Za-z0-9_-]{12,}|(?<=Bearer )[A-Za-z0-9._~+/=-]{8,}")
MIN_SECRET_LENGTH = 8
REPLY_EXCERPT = 200  # characters of a malformed reply kept in its error


class ReplyError(Exception):
    """The endpoint answered, but not with what was asked for."""


class Endpoint(BaseModel):
    """Where and how to call an OpenAI-compatible server. The key itself is never stored: only its variable's name."""

    model_config = ConfigDict(frozen=True)

    model: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    max_retries: int = 3
    concurrency: int = 4

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env) or "not-set"

    def redact(self, text: str) -> str:
        """Error text without the API key: an endpoint may echo it back ("Incorrect API key provided: sk-..."), and
        errors go into results.json."""
        key = os.environ.get(self.api_key_env) or ""
        if len(key) >= MIN_SECRET_LENGTH:
            text = text.replace(key, "[redacted]")
        return KEY_SHAPED.sub("[redacted]", text)

    def client(self) -> Any:
        """An AsyncOpenAI client for this endpoint (use it as an async context manager)."""
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key(),
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=DefaultAsyncHttpxClient(transport=DeadlineTransport(self.timeout)),
        )


class DeadlineTransport(httpx.AsyncBaseTransport):
    """httpx's transport with a deadline on each whole attempt, headers and body: httpx's own timeouts are per read,
    so a server that trickles bytes could hold a request for as long as it liked. A missed deadline is a read
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


def first_choice(response: Any, what: str) -> Any:
    """The first choice of a completion reply; anything else (an error object, an HTML page) is a ReplyError."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        excerpt = response if isinstance(response, str) else str(response.model_dump(exclude_none=True))
        raise ReplyError(f"the reply is not a {what}: {excerpt[:REPLY_EXCERPT]!r}")
    return choices[0]


async def gather_bounded(
    jobs: Sequence[Awaitable[T]], concurrency: int, on_done: Callable[[], None] | None = None
) -> list[T]:
    """Await the jobs with at most `concurrency` running at once, results in order; `on_done` after each."""
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(job: Awaitable[T]) -> T:
        async with semaphore:
            result = await job
        if on_done is not None:
            on_done()
        return result

    return list(await asyncio.gather(*(bounded(job) for job in jobs)))


def request_failure(endpoint: Endpoint, error: BaseException) -> str:
    """A failed request's reason as stored: the error's type and text, the key redacted."""
    return endpoint.redact(f"{type(error).__name__}: {error}")
