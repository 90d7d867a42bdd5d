"""Attention beyond transformers' own back-ends: `sdpa_flex` (sdpa where a layer's mask is plain causal, flex
attention where it is not) and flex attention's kernel options for the devices they were tuned on.

Measured per layer (`bench/attention_speed.py`, H100, 8 x 1024 tokens, forward + backward; BENCHMARKS.md): for
Gemma 3 270M's causal layers sdpa (cuDNN's causal kernels) takes 0.31 ms against flex's 0.61; for its 512-token
sliding windows flex (which skips the key blocks outside the window) 0.50 ms against sdpa's 0.71 with a mask
tensor. So each layer gets the faster one: transformers picks an implementation per model, this picks per mask.
"""

from __future__ import annotations

from typing import Any

import torch

SDPA_FLEX = "sdpa_flex"

# Flex attention's Triton tiles by (device capability, head size), where torch's defaults lose: on an H100 at head
# size 256 (Gemma 2 and 3) the forward with 128 x 64 tiles and 8 warps takes 0.20 ms per 2B-shape layer against
# 0.29 ms, the backward with 8 warps 1.10 ms against 1.44 (bench/attention_speed.py).
_TUNED: dict[tuple[tuple[int, int], int], dict[str, int]] = {
    ((9, 0), 256): {
        **{"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_stages": 2, "fwd_num_warps": 8},
        **{"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_N2": 64, "bwd_BLOCK_M2": 64},
        **{"bwd_num_stages": 2, "bwd_num_warps": 8},
    }
}


def flex_kernel_options(config: Any, device: torch.device) -> dict[str, int] | None:
    """Kernel options for flex attention on this model and device; None keeps torch's defaults."""
    if device.type != "cuda":
        return None
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return _TUNED.get((torch.cuda.get_device_capability(device), head_dim))


def _sdpa_or_flex(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(attention_mask, BlockMask):
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_sdpa_flex(model: Any) -> None:
    """Switch a model on sdpa to `sdpa_flex`: the masks transformers builds stay sdpa's (tensors, or None where
    causal), so nothing changes until a caller passes flex BlockMasks for some layer types (adapters.packing)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SDPA_FLEX, _sdpa_or_flex)
    AttentionMaskInterface.register(SDPA_FLEX, sdpa_mask)
    model.set_attn_implementation(SDPA_FLEX)
