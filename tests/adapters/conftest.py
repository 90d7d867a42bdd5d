"""Fixtures for the trainer's tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def _tiny_gemma3() -> torch.nn.Module:
    """A tiny random Gemma 3 (sdpa, eval mode) stands in for the embedded one where only the attention matters: its
    sliding window (16) is shorter than the rows, which the embedded model's (512) is not, and what is under test
    is which keys each query sees or which back-end is chosen, not the weights."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.fixture
def tiny_gemma3() -> Callable[[], torch.nn.Module]:
    """Returns a builder of fresh tiny random Gemma 3 models (seeded: every one has the same weights)."""
    return _tiny_gemma3
