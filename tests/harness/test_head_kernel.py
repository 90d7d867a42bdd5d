"""The fused LM-head log-sum-exp kernel (harness.head_kernel) against full logits in float64.

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
from harness.head_kernel import linear_nll

generator = torch.Generator().manual_seed(0)
# rows not a multiple of the 128-row block, a dimension not a multiple of 64, a vocabulary split unevenly
for rows, dim, vocab, softcap in [(5, 40, 1000, None), (130, 72, 700, 30.0), (3, 64, 129, None)]:
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


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="a GPU runs the compiled kernel below; the interpreter of the Triton that CUDA torch 2.11 ships (3.6) "
    "cannot index a range by a tensor bound, which 3.9's can",
)
def test_kernel_matches_full_logits_in_the_interpreter() -> None:
    env = os.environ | {"TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CASES)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")[:-1]
    assert len(lines) == 3
    for line in lines:
        *_, error, scale = map(float, line.split()[-2:])
        assert error < 1e-5 * max(1.0, scale), line


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_bf16_kernel_at_gemma_vocabulary(softcap: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import headloss
    from harness.head_kernel import linear_nll

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
