"""The chunked LM-head NLL against plain PyTorch cross-entropy over full logits (float64 autograd): values and
gradients, with and without Gemma 2's final soft-cap, over several chunks with a ragged last one."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from harness.kernels import headloss


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(headloss, "LOGIT_CHUNK_BYTES", 4 * 97 * 7)  # 7 rows of a 97-token vocabulary per chunk


def reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None):
    hidden64 = hidden.detach().double().requires_grad_()
    logits = hidden64 @ weight.double().T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    loss.backward()
    return loss.detach(), hidden64.grad


def case(seed: int, requires_grad: bool = False) -> tuple[torch.Tensor, torch.nn.Linear, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(30, 16, generator=generator).mul_(3).requires_grad_()
    head = torch.nn.Linear(16, 97, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(97, 16, generator=generator))
    head.weight.requires_grad_(requires_grad)
    return hidden, head, torch.randint(0, 97, (30,), generator=generator)


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("trainable_head", [False, True], ids=["fused", "checkpointed"])
def test_summed_nll_and_its_gradient_match_full_logits(
    small_chunks: None, softcap: float | None, trainable_head: bool
) -> None:
    hidden, head, targets = case(seed=int(trainable_head) + 2 * int(bool(softcap)), requires_grad=trainable_head)
    loss = headloss.summed_nll(hidden, targets, head, softcap)
    (loss * 0.5).backward()  # a scale, as the trainer divides by the step's supervised tokens
    expected_loss, expected_grad = reference(hidden, head.weight, targets, softcap)
    assert hidden.grad is not None
    assert float(loss.detach()) == pytest.approx(float(expected_loss), rel=1e-5)
    torch.testing.assert_close(hidden.grad.double(), expected_grad * 0.5, rtol=1e-4, atol=1e-6)


def test_token_nll_gives_per_row_values(small_chunks: None) -> None:
    hidden, head, targets = case(seed=7)
    logits = (hidden @ head.weight.T).double()
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(headloss.token_nll(hidden, targets, head, None).double(), expected, rtol=1e-5, atol=1e-6)


def test_chunks_bound_the_logits() -> None:
    assert headloss.chunk_rows(262_144) * 262_144 * 4 <= headloss.LOGIT_CHUNK_BYTES
    assert headloss.chunk_rows(10**12) == 1


class _LiveBytes(TorchDispatchMode):
    """The most bytes that tensors created by ops held at once (each storage counted once, views not at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and not tensor._is_view():
                pointer = tensor.untyped_storage().data_ptr()
                if pointer not in self.live:  # an in-place op returns its input
                    self.live[pointer] = tensor.untyped_storage().nbytes()
                    weakref.finalize(tensor, self.live.pop, pointer, None)
        self.peak = max(self.peak, sum(self.live.values()))
        return out


def test_the_heads_chunks_are_freed_before_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight chunks need no more memory than one: each chunk's logits and their gradient are gone before the next
    chunk's logits exist (a gradient held over into the next chunk once put 0.125 GiB on the 270M's training peak
    on a GPU). Hidden size 4 against a vocabulary of 2048, so that the [rows x vocabulary] buffers dominate."""
    monkeypatch.setattr(headloss, "LOGIT_CHUNK_BYTES", 4 * 2048 * 16)  # 16 rows per chunk: 128 KiB of fp32 logits
    head = torch.nn.Linear(4, 2048, bias=False).requires_grad_(False)

    def peak(rows: int) -> int:
        hidden = torch.randn(rows, 4, requires_grad=True)
        with _LiveBytes() as tracked:
            headloss.summed_nll(hidden, torch.randint(0, 2048, (rows,)), head, None).backward()
        return tracked.peak

    one, eight = peak(16), peak(128)
    assert one >= 2 * 4 * 2048 * 16  # a chunk's logits and their gradient at least
    assert eight - one < 4 * 2048 * 16 / 4  # the rows' own vectors only, far under a chunk's buffer
