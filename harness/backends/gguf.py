"""The `gguf` backend: a GGUF file run in process by llama.cpp (llama-cpp-python), for fast CPU evaluation of every
task kind. `--model gguf:PATH`, or `gemma-3-270m-gguf` for the embedded model's own GGUF.

Scoring asks llama.cpp for logits only at the positions that are scored (a decode batch flags them), so a long
context costs its forward pass but not the 262k-wide LM head at each of its tokens; a context shared with the
previous request (a question's choices) stays in the KV cache and is not run again. Log-softmax, target
log-probabilities and greedy flags are computed from those logits in torch. Tokenisation follows
lm-evaluation-harness as the transformers backend does (hf_loglikelihood.encode_pairs): one BOS, the context's
trailing whitespace moved onto the continuation. Greedy generation decodes the whole batch together
(gguf_decode); sampled generation is llama.cpp's own loop, one prompt at a time. Adapters are not served
here: merge them first (`harness merge`) and convert.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.backends.embedded import EMBEDDED_GGUF, GEMMA_CHAT_TEMPLATE, embedded_gguf_path
from harness.backends.gguf_decode import greedy_batch
from harness.backends.hf_loglikelihood import encode_pairs
from harness.backends.hf_requests import cut_at_stop, rolling_windows
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
from harness.core.fingerprint import hash_file, hash_json
from harness.core.record import ModelRunSpec
from harness.core.registry import SampleStats
from harness.core.taskspec import GenerationConfig, TaskSpec, Windows

GGUF_PREFIX = "gguf:"
DEFAULT_CONTEXT = 2048
SOFTMAX_ROWS = 64  # logit rows put through log-softmax at once (each row is the vocabulary wide)


def is_gguf_name(name: str) -> bool:
    return name == EMBEDDED_GGUF or name.startswith(GGUF_PREFIX)


def gguf_path(name: str) -> Path:
    """The GGUF file a `--model` value names; a missing file is a user error."""
    if name == EMBEDDED_GGUF:
        return embedded_gguf_path()
    path = Path(name.removeprefix(GGUF_PREFIX)).expanduser()
    if not path.is_file():
        raise HarnessError("no such GGUF file", path=path, field="--model", hint="gguf:PATH names a .gguf file")
    return path


class _Tokenizer:
    """llama.cpp's tokenizer with the few attributes of a transformers tokenizer that encode_pairs reads: special
    tokens in the text (a rendered chat template) are parsed as such, as transformers does."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.bos_token_id = llm.token_bos() if llm.token_bos() >= 0 else None
        self.eos_token_id = llm.token_eos()
        self.bos_token = self._text(self.bos_token_id) if self.bos_token_id is not None else None

    def _text(self, token: int) -> str:
        return str(self.llm.detokenize([token], special=True).decode("utf-8", errors="replace"))

    def encode(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def __call__(self, texts: Sequence[str], add_special_tokens: bool = False) -> _Encoded:
        return _Encoded([self.encode(text) for text in texts])


@dataclass(frozen=True)
class _Encoded:
    input_ids: list[list[int]]


class GGUFBackend:
    kinds = frozenset({"generate", "perplexity", "multiple_choice", "loglikelihood"})

    def __init__(self, name: str, n_ctx: int = DEFAULT_CONTEXT, threads: int | None = None) -> None:
        self.name = name
        self.path = gguf_path(name)
        self.n_ctx = n_ctx
        self.threads = threads or len(os.sched_getaffinity(0))
        self._llm: Any = None
        self._tokenizer: _Tokenizer | None = None
        self._file_hash = hash_file(self.path)

    @property
    def llm(self) -> Any:
        """The llama.cpp model, loaded on first use (a run served from the cache needs only the file's hash)."""
        if self._llm is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise HarnessError(
                    "the gguf backend needs llama-cpp-python", field="--model", hint="pip install 'harness[gguf]'"
                ) from None
            self._llm = Llama(
                str(self.path),
                n_ctx=self.n_ctx,
                n_batch=min(self.n_ctx, 512),
                n_threads=self.threads,
                n_threads_batch=self.threads,
                logits_all=False,
                verbose=False,
            )
        return self._llm

    @property
    def tokenizer(self) -> _Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = _Tokenizer(self.llm)
        return self._tokenizer

    @property
    def fingerprint(self) -> str:
        from importlib.metadata import version

        # llama.cpp's kernels change between releases, and with them the last digits of every score.
        return hash_json({"gguf": self._file_hash, "n_ctx": self.n_ctx, "llama_cpp": version("llama-cpp-python")})

    @property
    def label(self) -> str:
        return self.name

    def describe(self) -> ModelRunSpec:
        return ModelRunSpec(
            name=self.name,
            checkpoint=str(self.path),
            fingerprint=self.fingerprint,
            base_fingerprint=self._file_hash,
            backend="gguf",
            device="cpu",
        )

    def _chat_template(self) -> str | None:
        if self.name == EMBEDDED_GGUF:  # the template the embedded transformers checkpoint carries
            return GEMMA_CHAT_TEMPLATE
        return self.llm.metadata.get("tokenizer.chat_template")

    def unsupported(self, spec: TaskSpec) -> str | None:
        if spec.kind == "perplexity" and spec.perplexity.max_length > self.n_ctx:
            needed = spec.perplexity.max_length
            return f"has a context of {self.n_ctx} tokens, below the task's max_length {needed} (--n-ctx)"
        if spec.chat_template and spec.kind != "perplexity" and not self._chat_template():
            return "has no chat template in its GGUF metadata (the task sets chat_template)"
        return None

    def model_input(self, prompt: Prompt) -> str:
        if not prompt.chat:
            return prompt.text
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        tokenizer = self.tokenizer
        template = self._chat_template() or ""
        formatter = Jinja2ChatFormatter(template, tokenizer._text(tokenizer.eos_token_id), tokenizer.bos_token or "")
        return str(formatter(messages=prompt.messages()).prompt)  # type: ignore[arg-type]

    def batch_size(self, requested: int) -> int:
        return requested

    def _prompt_tokens(self, text: str) -> list[int]:
        """One BOS, then the text's tokens (a chat-rendered text's own BOS text is dropped for it)."""
        tokenizer = self.tokenizer
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return bos + tokenizer.encode(text.removeprefix(tokenizer.bos_token or "\0"))

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[Generation]:
        """Greedy: the whole batch decoded together (gguf_decode); sampling: llama.cpp's own loop, one at a time."""
        outputs: dict[int, Generation] = {}
        tokenised: dict[int, list[int]] = {}
        for index, prompt in enumerate(prompts):
            tokens = self._prompt_tokens(self.model_input(prompt))
            if len(tokens) + config.max_new_tokens > self.n_ctx:
                outputs[index] = RequestError(f"{len(tokens)} prompt tokens + max_new_tokens exceed n_ctx {self.n_ctx}")
            else:
                tokenised[index] = tokens
        if config.temperature == 0 and tokenised:
            texts = greedy_batch(self.llm, list(tokenised.values()), config.max_new_tokens, config.stop)
            outputs |= dict(zip(tokenised, texts, strict=True))
        for index, tokens in tokenised.items() if config.temperature > 0 else ():
            completion = self.llm.create_completion(
                tokens,
                max_tokens=config.max_new_tokens,
                stop=config.stop or None,
                min_p=0.0,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=config.top_k,
                seed=config.seed,
            )
            outputs[index] = completion["choices"][0]["text"]
        return [
            output if isinstance(output := outputs[i], RequestError) else cut_at_stop(output, config.stop).strip()
            for i in range(len(prompts))
        ]

    def _scored(self, tokens: list[int], score_from: int) -> tuple[list[float], list[bool]]:
        """Log-probabilities of tokens[score_from:] (each given all before it) and whether each is the greedy
        choice. The tokens already in the KV cache that this sequence shares are not run again."""
        llm = self.llm
        held = llm.input_ids[: llm.n_tokens].tolist()
        shared = 0
        while shared < min(len(held), len(tokens)) and held[shared] == tokens[shared]:
            shared += 1
        start = min(shared, score_from - 1)  # the position predicting the first scored token is run again
        wanted = range(score_from - 1, len(tokens) - 1)  # positions whose logits predict a scored token
        rows: list[torch.Tensor] = []
        llm._ctx.kv_cache_seq_rm(-1, start, -1)
        llm.n_tokens = start
        for begin in range(start, len(tokens), llm.n_batch):
            chunk = tokens[begin : begin + llm.n_batch]
            batch = llm._batch
            batch.set_batch(chunk, n_past=begin, logits_all=False)
            flagged = [i for i in range(len(chunk)) if begin + i in wanted]
            for i in range(len(chunk)):
                batch.batch.logits[i] = (begin + i) in wanted
            if flagged:
                llm._ctx.decode(batch)
                rows += [self._logits(i) for i in flagged]
            else:
                batch.batch.logits[len(chunk) - 1] = True  # llama.cpp wants one output per batch
                llm._ctx.decode(batch)
            llm.input_ids[begin : begin + len(chunk)] = chunk
            llm.n_tokens = begin + len(chunk)
        targets = torch.tensor(tokens[score_from:])
        logprobs, greedy = [], []
        for offset in range(0, len(rows), SOFTMAX_ROWS):
            logits = torch.stack(rows[offset : offset + SOFTMAX_ROWS]).float()
            part = targets[offset : offset + SOFTMAX_ROWS]
            logprobs += logits.log_softmax(-1).gather(1, part[:, None])[:, 0].double().tolist()
            greedy += (logits.argmax(-1) == part).tolist()
        return logprobs, greedy

    def _logits(self, batch_index: int) -> torch.Tensor:
        import numpy as np

        pointer = self.llm._ctx.get_logits_ith(batch_index)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).copy())

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[Continuation]:
        results: list[Continuation] = []
        with torch.inference_mode():
            for context, continuation in encode_pairs(self.tokenizer, pairs):
                tokens = context + continuation
                if len(tokens) > self.n_ctx:
                    results.append(RequestError(f"{len(tokens)} tokens exceed n_ctx {self.n_ctx}"))
                    continue
                logprobs, greedy = self._scored(tokens, len(context))
                results.append(ContinuationScore(sum(logprobs), len(continuation), all(greedy)))
        return results

    def loglikelihood_rolling(
        self, texts: Sequence[str], max_length: int, stride: int, batch_size: int, windows: Windows = "strided"
    ) -> Callable[[], list[Rolling]]:
        results: list[Rolling] = []
        with torch.inference_mode():
            for text in texts:
                tokens = self._prompt_tokens(text)
                nll, count = 0.0, 0
                for window in rolling_windows(tokens, max_length, stride, scheme=windows):
                    logprobs, _ = self._scored(window.input_ids, window.score_from)
                    nll -= sum(logprobs)
                    count += len(logprobs)
                results.append(SampleStats(nll=nll, tokens=count, bytes=len(text.encode("utf-8"))))
        return ready(results)
