"""The LM-head log-sum-exp kernels (harness.kernels.head_kernel) against full logits in float64: scoring's, fused into
the head's matmul, and training's, over given logits.

On the CPU the kernel runs in Triton's interpreter (fp32 inputs: the interpreter's bf16 matmul is wrong on CPUs, a
limitation of the interpreter, not of the kernel); the bf16 check at Gemma's real vocabulary needs a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

CASES = """
import torch
from harness.kernels.head_kernel import linear_nll

generator = torch.Generator().manual_seed(0)
# rows not a multiple of the 128-row block, a dimension not a multiple of 64, a vocabulary split unevenly
# (a dimension of 9: rows 36 bytes apart, which no tensor descriptor can address: pointer loads)
for rows, dim, vocab, softcap in [(5, 40, 1000, None), (130, 72, 700, 30.0), (3, 64, 129, None), (4, 9, 300, None)]:
    hidden = torch.randn(rows, dim, generator=generator) * 2
    weight = torch.randn(vocab, dim, generator=generator)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    logits = hidden.double() @ weight.double().T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    got = linear_nll(hidden, weight, targets, softcap).double()
    print(rows, dim, vocab, softcap, float((got - expected).abs().max()), float(expected.abs().max()))
assert linear_nll(torch.zeros(0, 8), torch.ones(10, 8), torch.zeros(0, dtype=torch.long), None).shape == (0,)
"""


LSE_CASES = """
import torch
from harness.kernels import head_kernel
from harness.kernels import headloss

head_kernel.LSE_SLICE, head_kernel.LSE_BLOCK = 300, 128  # several slices and loads per row, the last ones partial
generator = torch.Generator().manual_seed(0)
for rows, vocab, softcap in [(3, 1000, None), (5, 700, 30.0), (2, 128, None), (4, 301, None)]:
    wide = torch.randn(rows, vocab + 7, generator=generator) * 8
    logits = wide[:, :vocab]  # rows a stride apart that is not the vocabulary
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    capped = torch.tanh(logits.double() / softcap) * softcap if softcap else logits.double()
    want_lse = torch.logsumexp(capped, dim=-1)
    want_nll = torch.nn.functional.cross_entropy(capped, targets, reduction="none")
    nll, lse = headloss._nll_and_lse_kernel(logits, targets, softcap)
    errors = float((lse.double() - want_lse).abs().max()), float((nll.double() - want_nll).abs().max())
    print(rows, vocab, softcap, max(errors), float(want_lse.abs().max()))
empty = head_kernel.logits_nll_and_lse(torch.zeros(0, 9), torch.zeros(0, dtype=torch.long), None)
assert [part.shape for part in empty] == [(0,), (0,)]
"""

CAPPED_CASES = """
import torch
from harness.kernels import head_kernel
from harness.kernels import headloss

headloss._triton_on = lambda tensor: True  # the interpreter runs the kernels on CPU tensors
head_kernel.LSE_SLICE, head_kernel.LSE_BLOCK = 300, 128  # several slices and loads per row, the last ones partial
headloss.LOGIT_CHUNK_BYTES = 4 * 701 * 7  # chunks of 7 rows, the last one ragged
generator = torch.Generator().manual_seed(0)
# a cap of 30 (Gemma 2's), one of 3 that saturates most logits, and a cap past which the kernel is not used
for rows, dim, vocab, softcap, weighted in [(23, 16, 701, 30.0, False), (9, 8, 700, 3.0, True), (5, 8, 400, 50.0, 0)]:
    hidden = (torch.randn(rows, dim, generator=generator) * 2).requires_grad_()
    head = torch.nn.Linear(dim, vocab, bias=False).requires_grad_(False)
    head.weight.copy_(torch.randn(vocab, dim, generator=generator))
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[:4] = torch.tensor([0, 299, 300, vocab - 1])  # at the slices' and the vocabulary's edges
    weights = (torch.rand(rows, generator=generator) > 0.3).float() if weighted else None
    hidden64 = hidden.detach().double().requires_grad_()
    capped = torch.tanh(hidden64 @ head.weight.double().T / softcap) * softcap
    want = torch.nn.functional.cross_entropy(capped, targets, reduction="none")
    want = want.sum() if weights is None else (want * weights).sum()
    (want * 0.5).backward()
    for one_pass in (True, False):  # the one pass, and the log-sum-exp pass then the gradient's
        headloss.CAPPED_ONE_PASS = one_pass
        hidden.grad = None
        loss = headloss.summed_nll(hidden, targets, head, softcap, weights)
        (loss * 0.5).backward()
        loss_error = float((loss.detach().double() - want).abs()) / float(want)
        errors = loss_error, float((hidden.grad - hidden64.grad).abs().max())
        print(rows, vocab, softcap, one_pass, max(errors), float(hidden64.grad.abs().max()))
"""

INTERPRETER_SKIP = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="a GPU runs the compiled kernels; the interpreter of the Triton that CUDA torch 2.11 ships (3.6) "
    "cannot index a range by a tensor bound, which 3.9's can",
)


def _assert_interpreted_cases_agree(cases: str, count: int) -> None:
    """Runs `cases` with Triton's CPU interpreter: each of its `count` lines ends with an error and a scale, and
    every error is within 1e-5 of its scale (at least 1)."""
    env = os.environ | {"TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(cases)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")[:-1]
    assert len(lines) == count
    for line in lines:
        error, scale = map(float, line.split()[-2:])
        assert error < 1e-5 * max(1.0, scale), line


@INTERPRETER_SKIP
def test_logits_nll_and_lse_match_float64_in_the_interpreter() -> None:
    """Training's log-sum-exp of given logits, and the NLL beside it (the path the fused head loss takes on a GPU)."""
    _assert_interpreted_cases_agree(LSE_CASES, 4)


@INTERPRETER_SKIP
def test_capped_one_pass_matches_float64_in_the_interpreter() -> None:
    """Training's soft-capped head in one pass over the logits (E W / sum + the target's term, in backward) and in
    two (log-sum-exp, then softmax - one-hot): loss (relative) and hidden states' gradient against float64."""
    _assert_interpreted_cases_agree(CAPPED_CASES, 6)


@INTERPRETER_SKIP
@pytest.mark.parametrize("tma", [None, False])
def test_kernel_matches_full_logits_in_the_interpreter(tma: bool | None) -> None:
    """Tiles through tensor descriptors (the default: the interpreter counts as having them) and through pointers."""
    _assert_interpreted_cases_agree(f"from harness.kernels import head_kernel\nhead_kernel.TMA = {tma}\n" + CASES, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_bf16_kernel_at_gemma_vocabulary(softcap: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.kernels import headloss
    from harness.kernels.head_kernel import linear_nll

    generator = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(1000, 640, generator=generator, device="cuda").bfloat16()
    head = torch.nn.Linear(640, 262_144, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    head.weight.copy_(torch.randn(262_144, 640, generator=generator, device="cuda") * 0.05)
    targets = torch.randint(0, 262_144, (1000,), generator=generator, device="cuda")
    logits = hidden.double() @ head.weight.double().T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    fused = headloss.token_nll(hidden, targets, head, softcap)  # takes the kernel
    assert torch.equal(fused, linear_nll(hidden, head.weight, targets, softcap))
    assert (fused.double() - expected).abs().max() < 1e-4 * expected.abs().max()
    monkeypatch.setattr(headloss, "FUSED_KERNEL", False)
    chunked = headloss.token_nll(hidden, targets, head, softcap)  # bf16 logits: rounded before the log-sum-exp
    assert (chunked.double() - expected).abs().max() < 1e-2 * expected.abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("vocab", "softcap"), [(262_144, None), (256_000, 30.0)])
def test_bf16_logits_nll_and_lse_at_gemma_vocabulary(vocab: int, softcap: float | None) -> None:
    """Training's log-sum-exp of a chunk of bf16 logits: against float64 and against the compiled reduction that it
    replaced (harness.kernels.headloss._nll_and_lse), with the NLL beside it."""
    from harness.kernels import headloss

    generator = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(256, vocab, generator=generator, device="cuda") * 4).bfloat16()
    targets = torch.randint(0, vocab, (256,), generator=generator, device="cuda")
    capped = headloss._capped(logits, softcap).double()
    nll, lse = headloss._nll_and_lse_kernel(logits, targets, softcap)
    assert (lse.double() - torch.logsumexp(capped, dim=-1)).abs().max() < 1e-5 * capped.abs().max()
    compiled_nll, compiled_lse = headloss._compiled(headloss._nll_and_lse)(logits, targets, softcap)
    assert (lse - compiled_lse).abs().max() < 1e-4 and (nll - compiled_nll).abs().max() < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_capped_one_pass_at_gemma_2_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training's soft-capped head in bf16 at Gemma 2's vocabulary (3 chunks): the one pass's loss and gradient
    against float64, and no further from it than the two passes' (log-sum-exp, then softmax - one-hot)."""
    from harness.kernels import headloss

    generator = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(600, 256, generator=generator, device="cuda").bfloat16().requires_grad_()
    head = torch.nn.Linear(256, 256_000, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    head.weight.copy_(torch.randn(256_000, 256, generator=generator, device="cuda") * 0.5)  # logits' spread ~8
    targets = torch.randint(0, 256_000, (600,), generator=generator, device="cuda")
    hidden64 = hidden.detach().double().requires_grad_()
    capped = torch.tanh(hidden64 @ head.weight.double().T / 30.0) * 30.0
    want = torch.nn.functional.cross_entropy(capped, targets, reduction="sum")
    want.backward()
    errors = {}
    for one_pass in (True, False):
        monkeypatch.setattr(headloss, "CAPPED_ONE_PASS", one_pass)
        hidden.grad = None
        loss = headloss.summed_nll(hidden, targets, head, 30.0)
        loss.backward()
        assert hidden.grad is not None
        assert abs(float(loss) - float(want)) < 1e-3 * float(want)
        errors[one_pass] = float((hidden.grad.double() - hidden64.grad).abs().max())
    assert errors[True] < 1e-2 * float(hidden64.grad.abs().max())
    assert errors[True] <= 1.5 * errors[False], errors
