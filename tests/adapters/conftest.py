"""Fixtures for the trainer's tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def _tiny_gemma3(attention: str = "sdpa", width: int = 32, vocab: int = 512) -> torch.nn.Module:
    """A tiny random Gemma 3 (eval mode, on the CPU, two layers: one sliding, one full) stands in for the embedded
    one where only the attention or the training mechanics matter: its sliding window (16) is shorter than the
    rows, which the embedded model's (512) is not, and what is under test is which keys each query sees, which
    back-end is chosen or how steps replay, not the weights."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, head_dim=width // 2, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


@pytest.fixture
def tiny_gemma3() -> Callable[..., torch.nn.Module]:
    """Returns a builder of fresh tiny random Gemma 3 models (seeded: every one of a size has the same weights)."""
    return _tiny_gemma3
