"""Packing several examples into one sequence without letting them attend to each other.

position_ids restart at every example, and the attention mask is block-diagonal causal (4D, additive). On
transformers 5.x with sdpa, position_ids alone do NOT isolate packed examples; the 4D mask does. Models with
sliding-window layers (Gemma 3) get a mask per layer type, the sliding one also limited to the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapters.tokenize import IGNORE_INDEX, TokenizedExample


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE_INDEX on prompt and padding
    position_ids: torch.Tensor  # [B, T], restarting at each example
    segment_ids: torch.Tensor  # [B, T], 1.. per example in a row, 0 on padding

    @property
    def supervised_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def packed(self) -> bool:
        """Whether some row holds more than one example (padding is segment 0, only at a row's end)."""
        return bool((self.segment_ids > 1).any())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.input_ids, self.labels, self.position_ids, self.segment_ids

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in self.tensors()))


def pack(examples: Sequence[TokenizedExample], max_seq_len: int) -> list[list[int]]:
    """First-fit-decreasing bins of example indices whose lengths sum to at most `max_seq_len`."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    space: list[int] = []
    for index in order:
        length = len(examples[index].input_ids)
        slot = next((b for b, free in enumerate(space) if free >= length), None)
        if slot is None:
            bins.append([index])
            space.append(max_seq_len - length)
        else:
            bins[slot].append(index)
            space[slot] -= length
    return bins


def collate(rows: Sequence[Sequence[TokenizedExample]], pad_id: int, shape: tuple[int, int] | None = None) -> Batch:
    """Right-padded tensors for rows of (packed) examples; `shape` pads to a fixed [rows, width] (CUDA graphs)."""
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    shape = shape or (len(rows), width)
    assert len(rows) <= shape[0] and width <= shape[1], f"{len(rows)} rows of up to {width} tokens exceed {shape}"
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for segment, example in enumerate(row, start=1):
            end = start + len(example.input_ids)
            input_ids[r, start:end] = torch.tensor(example.input_ids)
            labels[r, start:end] = torch.tensor(example.labels)
            position_ids[r, start:end] = torch.arange(end - start)
            segment_ids[r, start:end] = segment
            start = end
    return Batch(input_ids, labels, position_ids, segment_ids)


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
    """[B, 1, T, T] additive mask: query i sees key j iff same example and j <= i (and i - j < window)."""
    length = segment_ids.shape[1]
    query = torch.arange(length, device=segment_ids.device)[:, None]
    key = torch.arange(length, device=segment_ids.device)[None, :]
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (key <= query)
    if window is not None:
        allowed &= (query - key) < window
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)  # padding rows: avoid all-masked
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def flex_block_mask(segment_ids: torch.Tensor, window: int | None = None) -> Any:
    """block_causal_mask as flex attention's BlockMask: its kernels skip the key blocks that no query of a query
    block may see (above the diagonal, outside the window, other examples) instead of adding -inf to them."""
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(row: Any, head: Any, query: Any, key: Any) -> Any:
        visible = (key <= query) & (segment_ids[row, query] == segment_ids[row, key])
        return visible & (query - key < window) if window is not None else visible

    rows, length = segment_ids.shape
    return create_block_mask(allowed, rows, None, length, length, device=segment_ids.device)


def attention_masks(
    config: Any,
    segment_ids: torch.Tensor,
    dtype: torch.dtype,
    causal_none: bool = False,
    flex: bool = False,
    windowed: bool = False,
) -> Any:
    """The mask argument for the decoder: one mask, or a mapping per layer type (sliding windows).

    `causal_none` (rows of one example each, sdpa attention): a layer type whose mask would be plain causal gets
    None, which sdpa runs as `is_causal` (cuDNN's causal kernels) without a mask tensor; `windowed` (attention that
    applies the sliding window itself: harness.kernels.cudnn_attention) extends that to windowed layer types.
    `flex`: the other masks as flex attention BlockMasks instead of 4D tensors."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)

    def mask(kind: str) -> Any:
        kind_window = window if kind == "sliding_attention" and window is not None else None
        if causal_none and (windowed or kind_window is None or kind_window >= segment_ids.shape[1]):
            return None
        return flex_block_mask(segment_ids, kind_window) if flex else block_causal_mask(segment_ids, dtype, kind_window)

    if not layer_types:
        return mask("full_attention")
    return {kind: mask(kind) for kind in set(layer_types)}
