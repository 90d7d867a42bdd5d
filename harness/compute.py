"""What the runner asks of a model: rolling-window log-likelihoods and batched generation.

The LM head is applied only at positions that carry a loss, a chunk at a time: Gemma's vocabulary is 262k, so
full [tokens x vocab] logits would dominate both time and memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.models import LoadedModel
from harness.registry import SampleStats
from harness.taskspec import GenerationConfig

LOGIT_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class Window:
    """A slice of one text's tokens; targets at local positions >= score_from are scored."""

    text_index: int
    input_ids: list[int]
    score_from: int


def rolling_windows(token_ids: Sequence[int], max_length: int, stride: int, text_index: int = 0) -> list[Window]:
    """Overlapping windows of at most `max_length` tokens, advancing by `stride`; each token is scored once,
    with as much left context as its window gives. Token 0 (BOS) is context only."""
    windows: list[Window] = []
    scored_until = 1
    begin = 0
    while scored_until < len(token_ids):
        begin = min(begin, scored_until - 1)  # every scored token needs its predecessor in the window
        end = min(begin + max_length, len(token_ids))
        windows.append(Window(text_index, list(token_ids[begin:end]), scored_until - begin))
        scored_until = end
        begin += stride
    return windows


def output_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """The decoder stack, the LM head and the final logit soft-cap (Gemma 2) of a causal LM (or PEFT wrapper)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return causal_lm.get_decoder(), causal_lm.get_output_embeddings(), softcap


def chunk_nll(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None, reduction: str = "none"
) -> torch.Tensor:
    """NLL of `targets` for one chunk of final hidden states: LM head, fp32 logits, Gemma 2's soft-cap."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets, reduction=reduction)


def token_nll(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None
) -> torch.Tensor:
    """Per-position NLL of `targets` given final hidden states, materialising logits a chunk of rows at a time."""
    losses = [
        chunk_nll(hidden[start : start + LOGIT_CHUNK_ROWS], targets[start : start + LOGIT_CHUNK_ROWS], head, softcap)
        for start in range(0, hidden.shape[0], LOGIT_CHUNK_ROWS)
    ]
    return torch.cat(losses) if losses else hidden.new_zeros(0)


@torch.inference_mode()
def window_nll(loaded: LoadedModel, windows: Sequence[Window]) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) for each window, run as one right-padded batch."""
    with loaded.engaged() as model:
        return _window_nll(model, loaded.tokenizer.pad_token_id, loaded.device, windows)


def _window_nll(
    model: torch.nn.Module, pad_id: int, device: torch.device, windows: Sequence[Window]
) -> list[tuple[float, int]]:
    decoder, head, softcap = output_head(model)
    width = max(len(w.input_ids) for w in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        input_ids[row, : len(window.input_ids)] = torch.tensor(window.input_ids)
        attention_mask[row, : len(window.input_ids)] = 1
    # Without padding the mask is all ones: leave it out so attention can take the fused causal kernels.
    mask = None if bool(attention_mask.all()) else attention_mask.to(device)
    hidden = decoder(input_ids=input_ids.to(device), attention_mask=mask)[0]
    rows, positions = [], []
    for row, window in enumerate(windows):
        for position in range(window.score_from, len(window.input_ids)):
            rows.append(row)
            positions.append(position)
    rows_t, positions_t = torch.tensor(rows), torch.tensor(positions)
    # The hidden state at position p-1 predicts the token at p.
    nll = token_nll(hidden[rows_t, positions_t - 1], input_ids[rows_t, positions_t].to(device), head, softcap)
    per_window = torch.zeros(len(windows), dtype=torch.float64).index_add_(0, rows_t, nll.double().cpu())
    return [(float(per_window[i]), len(w.input_ids) - w.score_from) for i, w in enumerate(windows)]


def encode_for_scoring(loaded: LoadedModel, text: str) -> list[int]:
    """Token ids of a text to score, with exactly one BOS in front."""
    tokenizer = loaded.tokenizer
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return [tokenizer.bos_token_id, *ids] if tokenizer.bos_token_id is not None else ids


def loglikelihood_rolling(
    loaded: LoadedModel, texts: Sequence[str], max_length: int, stride: int, batch_size: int
) -> list[SampleStats]:
    """Summed NLL over all tokens of each text (rolling windows past `max_length`), length-sorted batches."""
    windows = [
        window
        for index, text in enumerate(texts)
        for window in rolling_windows(encode_for_scoring(loaded, text), max_length, stride, index)
    ]
    windows.sort(key=lambda w: len(w.input_ids), reverse=True)
    nll_sums = [0.0] * len(texts)
    token_counts = [0] * len(texts)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        for window, (nll, count) in zip(batch, window_nll(loaded, batch), strict=True):
            nll_sums[window.text_index] += nll
            token_counts[window.text_index] += count
    return [
        SampleStats(nll=nll_sums[i], tokens=token_counts[i], bytes=len(text.encode("utf-8")))
        for i, text in enumerate(texts)
    ]


def _stop_token_ids(loaded: LoadedModel) -> list[int]:
    tokenizer = loaded.tokenizer
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return sorted(i for i in ids if i is not None)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to the first stop sequence."""
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]


@torch.inference_mode()
def generate(loaded: LoadedModel, prompts: Sequence[str], config: GenerationConfig, chat: bool) -> list[str]:
    """Continuations of one batch of prompts: left-padded, greedy unless temperature > 0 (then seeded)."""
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    # A chat-rendered prompt already starts with <bos>; a plain one gets it from the tokenizer.
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=not chat)
    sampling = {}
    if config.temperature > 0:
        torch.manual_seed(config.seed)
        sampling = {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k or None}
    with loaded.engaged() as model:
        output_ids = model.generate(
            **encoded.to(loaded.device),
            max_new_tokens=config.max_new_tokens,
            do_sample=config.temperature > 0,
            eos_token_id=_stop_token_ids(loaded),
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=config.stop or None,
            tokenizer=tokenizer if config.stop else None,
            **sampling,
        )
    new_tokens = output_ids[:, encoded["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [cut_at_stop(text, config.stop).strip() for text in texts]
