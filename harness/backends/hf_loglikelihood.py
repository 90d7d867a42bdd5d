"""Continuation log-likelihoods (multiple-choice and loglikelihood tasks) from an in-process transformers model.

Tokenised as lm-evaluation-harness does: the context's trailing whitespace moves onto the continuation, context
and context + continuation are encoded, and the continuation's tokens are what the whole has past the context's
length; exactly one BOS leads every sequence (an empty context is the BOS alone).

A context shared by several continuations (a question's choices) runs once: its row holds the context followed by
every continuation, each continuation attending to the context and to itself only (a block mask; position ids
restart after the context for each), so that a four-choice question costs one context plus four continuations
instead of four contexts. That needs a mask tensor, which sdpa and eager attention take; under other attention
back-ends each pair is its own causal row. Only the scored positions go through the LM head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.backends.hf import LoadedModel
from harness.backends.protocol import ContinuationScore
from harness.kernels.headloss import output_head, token_nll_and_greedy

PACKING_ATTENTION = ("sdpa", "eager")  # attention back-ends that take the block mask of a packed row


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """The context's trailing whitespace moved onto the continuation (as lm-evaluation-harness does)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Context and continuation token ids of each (context, continuation) pair, in one batched tokenizer call."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    bos_text = tokenizer.bos_token or ""
    # A chat-rendered context starts with the BOS text; the BOS id is prepended below, once.
    pairs = [(c.removeprefix(bos_text) if bos_text else c, x) for c, x in pairs]
    moved = [split_whitespace(context, continuation) for context, continuation in pairs]
    texts = sorted(
        {text for context, continuation in moved for text in (context, context + continuation, continuation)}
    )
    ids = dict(zip(texts, tokenizer(texts, add_special_tokens=False).input_ids, strict=True)) if texts else {}
    encoded = []
    for context, continuation in moved:
        if not context:
            encoded.append(([prefix], list(ids[continuation])))
            continue
        context_ids = [prefix, *ids[context]]
        whole = [prefix, *ids[context + continuation]]
        encoded.append((context_ids, whole[len(context_ids) :]))
    return encoded


@dataclass
class _Row:
    """One sequence of a batch: a context and the continuations scored after it (pair index, token ids)."""

    context: list[int]
    continuations: list[tuple[int, list[int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.context) + sum(len(ids) for _, ids in self.continuations)


def _rows(encoded: Sequence[tuple[list[int], list[int]]], pack: bool, max_length: int) -> list[_Row]:
    """Pairs grouped into rows: with `pack`, consecutive pairs that share a context share a row (within
    `max_length` tokens); otherwise one pair per row."""
    rows: list[_Row] = []
    for index, (context, continuation) in enumerate(encoded):
        last = rows[-1] if rows else None
        if pack and last is not None and last.context == context and len(last) + len(continuation) <= max_length:
            last.continuations.append((index, continuation))
        else:
            rows.append(_Row(context, [(index, continuation)]))
    return rows


def _layout(rows: Sequence[_Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Token ids, position ids and segment ids (0 context, i+1 continuation i, -1 padding) of a right-padded batch,
    with the (row, predicting position, target position, pair) of every scored token."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    scored: list[tuple[int, int, int, int]] = []
    for r, row in enumerate(rows):
        n = len(row.context)
        input_ids[r, :n] = torch.tensor(row.context)
        positions[r, :n] = torch.arange(n)
        segments[r, :n] = 0
        start = n
        for segment, (pair, ids) in enumerate(row.continuations, start=1):
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids, dtype=torch.long)
            positions[r, start:end] = torch.arange(n, n + len(ids))
            segments[r, start:end] = segment
            # The first continuation token is predicted from the context's last position, the others from the
            # continuation's previous token.
            scored += [(r, n - 1 if j == 0 else start + j - 1, start + j, pair) for j in range(len(ids))]
            start = end
    return {"input_ids": input_ids, "positions": positions, "segments": segments, "scored": torch.tensor(scored)}


def block_mask(positions: torch.Tensor, segments: torch.Tensor, window: int | None) -> torch.Tensor:
    """[batch, 1, query, key] booleans (True attends): causal, a continuation sees the context and itself, not the
    other continuations; `window` (sliding-window layers) limits the distance in positions. A padding query sees
    itself only (a row of no keys would give NaN)."""
    query, key = segments[:, :, None], segments[:, None, :]
    index = torch.arange(segments.shape[1])
    allowed = (index[None, None, :] <= index[None, :, None]) & (key >= 0) & ((key == 0) | (key == query))
    if window is not None:
        allowed &= (positions[:, :, None] - positions[:, None, :]) < window
    allowed |= torch.eye(segments.shape[1], dtype=torch.bool)[None] & (query < 0)
    return allowed[:, None]


def _attention_masks(config: Any, layout: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> Any:
    """The decoder's attention_mask: None where every row holds one continuation (causal attention suffices),
    else the block mask, per layer type where the model has layer types (sliding layers get the window)."""
    if int(layout["segments"].max()) <= 1:
        return None

    def mask(window: int | None) -> torch.Tensor:
        allowed = block_mask(layout["positions"], layout["segments"], window).to(device)
        if config._attn_implementation == "eager":  # eager adds the mask to the scores
            return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        return allowed

    layer_types = getattr(config, "layer_types", None)
    if not layer_types:
        return mask(None)
    window = getattr(config, "sliding_window", None)
    return {kind: mask(window if kind == "sliding_attention" else None) for kind in set(layer_types)}


def _score_rows(model: torch.nn.Module, rows: Sequence[_Row], pad_id: int, device: torch.device) -> torch.Tensor:
    """[scored tokens, 3]: pair index, NLL and greedy flag of every scored token of the batch."""
    decoder, head, softcap = output_head(model)
    layout = _layout(rows, pad_id)
    dtype = next(model.parameters()).dtype
    masks = _attention_masks(model.config, layout, device, dtype if dtype.is_floating_point else torch.float32)
    input_ids = layout["input_ids"].to(device)
    hidden = decoder(input_ids=input_ids, attention_mask=masks, position_ids=layout["positions"].to(device))[0]
    row, predictor, target, pair = layout["scored"].to(device).unbind(1)
    nll, greedy = token_nll_and_greedy(hidden[row, predictor], input_ids[row, target], head, softcap)
    return torch.stack([pair.double(), nll.double(), greedy.double()], dim=1)


@torch.inference_mode()
def loglikelihood(loaded: LoadedModel, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[ContinuationScore]:
    """Each continuation's log-likelihood given its context, in rows of shared contexts, longest first."""
    encoded = encode_pairs(loaded.tokenizer, pairs)
    pack = loaded.model.config._attn_implementation in PACKING_ATTENTION
    max_length = getattr(loaded.model.config, "max_position_embeddings", None) or 2**31
    rows = sorted(_rows(encoded, pack, max_length), key=len, reverse=True)
    logprob, tokens, greedy = [0.0] * len(pairs), [0] * len(pairs), [True] * len(pairs)
    with loaded.engaged() as model:
        batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
        scored = [_score_rows(model, batch, loaded.tokenizer.pad_token_id, loaded.device) for batch in batches]
    for pair, nll, is_greedy in torch.cat(scored).tolist() if scored else []:
        logprob[int(pair)] -= nll
        tokens[int(pair)] += 1
        greedy[int(pair)] = greedy[int(pair)] and bool(is_greedy)
    return [ContinuationScore(logprob[i], tokens[i], greedy[i]) for i in range(len(pairs))]
