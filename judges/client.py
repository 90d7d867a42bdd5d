"""The judge client: judge requests through the shared client layer (harness.backends.api_client: the OpenAI SDK
against any OpenAI-compatible base URL, its retries, a whole-reply deadline, bounded concurrency, key handling).

A reply that is no chat completion (no choices, an error object, an HTML page, truncated JSON) is a per-sample
error with its reason, like a failed call. Only successful judgments are cached in SQLite: a re-run makes no calls
for them and asks again for every error, so a judge that was down or broken is not remembered as such.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from harness.backends.api_client import Endpoint, ReplyError, first_choice, gather_bounded, request_failure
from harness.core.cache import ResultCache
from judges.parse import JudgeParseError

T = TypeVar("T")

REASK = "Your previous answer was not valid ({error}). Reply again with only the JSON object, in the shape asked for."


class JudgeEndpoint(Endpoint):
    """Where and how to call the judge, and its decoding settings."""

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
            raise ReplyError(f"the reply is not valid JSON ({error})") from None
        choice = first_choice(response, "chat completion")
        if getattr(choice, "message", None) is None:
            raise ReplyError(f"the reply is not a chat completion: {str(choice)[:200]!r}")
        content = choice.message.content or ""
        logprobs = [token.model_dump() for token in (choice.logprobs.content or [])] if choice.logprobs else []
        return content, logprobs

    async def _judge_one(self, client: Any, request: dict[str, Any], parse: Callable[[str], T]) -> Judgment[T]:
        from openai import APIError

        key = ResultCache.key(kind="judge", judge=self.endpoint.identity or self.endpoint.base_url, request=request)
        found = self.cache.get_many([key]).get(key)
        if found is not None and found["error"] is None:  # an error an older version cached is asked again
            return Judgment(
                value=found["value"], raw=found["raw"], error=found["error"], logprobs=found["logprobs"], cached=True
            )
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
        except (APIError, ReplyError) as error:
            return Judgment(value=None, error=request_failure(self.endpoint, error))
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
        self,
        requests: Sequence[tuple[list[dict[str, str]], dict[str, Any]]],
        parse: Callable[[str], T],
        on_judged: Callable[[], None] | None = None,
    ) -> list[Judgment[T]]:
        """Judge (messages, schema) pairs concurrently, in order; failures are Judgments with an error. `on_judged`
        is called as each one comes in (for progress)."""

        async def run() -> list[Judgment[T]]:
            async with self.endpoint.client() as client:
                jobs = [self._judge_one(client, self._request(m, s), parse) for m, s in requests]
                return await gather_bounded(jobs, self.endpoint.concurrency, on_done=on_judged)

        return asyncio.run(run())
