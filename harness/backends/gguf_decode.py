"""Greedy decoding of many prompts at once in llama.cpp: one sequence per prompt in a shared KV cache, every step
one decode call carrying the next token of each unfinished sequence. llama-cpp-python's own loop decodes one
sequence at a time, which leaves a CPU reading the whole model once per generated token; here each read of the
weights serves every sequence of the batch.

Its own llama.cpp context (the high-level `Llama` makes one with a single sequence), over the same loaded model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _context(llm: Any, sequences: int, tokens: int) -> Any:
    import llama_cpp
    from llama_cpp._internals import LlamaContext

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = max(tokens, 64)
    params.n_batch = params.n_ubatch = min(params.n_ctx, 512)
    params.n_seq_max = sequences
    params.kv_unified = True  # one cache of n_ctx cells shared by every sequence
    params.n_threads = params.n_threads_batch = llm.n_threads
    return LlamaContext(model=llm._model, params=params, verbose=False)


def _decode(context: Any, entries: list[tuple[int, int, int, bool]], n_batch: int) -> list[int]:
    """Decode (token, position, sequence, wants logits) entries in batches of n_batch; for each entry that wants
    logits, the greedy next token (its logits row read right after the call that held it)."""
    import llama_cpp
    from llama_cpp._internals import LlamaBatch

    vocab = llama_cpp.llama_n_vocab(llama_cpp.llama_model_get_vocab(context.model.model))
    rows: list[Any] = []
    for start in range(0, len(entries), n_batch):
        part = entries[start : start + n_batch]
        batch = LlamaBatch(n_tokens=len(part), embd=0, n_seq_max=1, verbose=False)
        batch.batch.n_tokens = len(part)
        for i, (token, position, sequence, logits) in enumerate(part):
            batch.batch.token[i] = token
            batch.batch.pos[i] = position
            batch.batch.n_seq_id[i] = 1
            batch.batch.seq_id[i][0] = sequence
            batch.batch.logits[i] = logits
        context.decode(batch)
        rows += [int(np.argmax(_row(context, i, vocab))) for i, entry in enumerate(part) if entry[3]]
        batch.close()
    return rows


def _row(context: Any, index: int, vocab: int) -> np.ndarray:
    return np.ctypeslib.as_array(context.get_logits_ith(index), shape=(vocab,))


def greedy_batch(llm: Any, prompts: Sequence[list[int]], max_new_tokens: int, stop: Sequence[str]) -> list[str]:
    """Greedy continuations of tokenised prompts, each until an end-of-generation token, a stop string or
    max_new_tokens; the text of the generated tokens (stop strings not cut here)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    context = _context(llm, len(prompts), sum(len(p) for p in prompts) + len(prompts) * max_new_tokens)
    n_batch = context.params.n_batch
    try:
        entries = [
            (token, position, sequence, position == len(prompt) - 1)
            for sequence, prompt in enumerate(prompts)
            for position, token in enumerate(prompt)
        ]
        next_tokens = _decode(context, entries, n_batch)
        generated: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        for _ in range(max_new_tokens):
            still = []
            for sequence, token in zip(active, next_tokens, strict=True):
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    continue
                generated[sequence].append(token)
                text = llm.detokenize(generated[sequence]).decode("utf-8", errors="ignore")
                if len(generated[sequence]) < max_new_tokens and not any(s in text for s in stop):
                    still.append(sequence)
            active = still
            if not active:
                break
            steps = [(generated[s][-1], len(prompts[s]) + len(generated[s]) - 1, s, True) for s in active]
            next_tokens = _decode(context, steps, n_batch)
        return [llm.detokenize(tokens).decode("utf-8", errors="ignore") for tokens in generated]
    finally:
        context.close()
