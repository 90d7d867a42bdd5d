"""Flex attention's kernel options for the devices they were tuned on (`bench/attention_speed.py`; BENCHMARKS.md)."""

from __future__ import annotations

from typing import Any

import torch

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


def caps_attention(config: Any) -> bool:
    """Whether the model soft-caps its attention logits (Gemma 2): sdpa cannot, eager and flex attention can."""
    return bool(getattr(config, "attn_logit_softcapping", None))


def flex_kernel_options(config: Any, device: torch.device) -> dict[str, int] | None:
    """Kernel options for flex attention on this model and device; None keeps torch's defaults."""
    if device.type != "cuda":
        return None
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return _TUNED.get((torch.cuda.get_device_capability(device), head_dim))


def flex_kwargs(config: Any, device: torch.device) -> dict[str, Any]:
    """The decoder call's extra arguments for flex attention's tuned tiles: empty unless the model runs flex
    attention on a device with tuned options."""
    flex = getattr(config, "_attn_implementation", None) == "flex_attention"
    options = flex_kernel_options(config, device) if flex else None
    return {"kernel_options": options} if options else {}
