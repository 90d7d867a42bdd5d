"""harness/kernels/nf4.py: NF4 weights dequantized by one kernel into `lora_linear`'s layouts give bitsandbytes' values.

On the CPU the kernel runs in Triton's interpreter against bitsandbytes' CPU backend (float32); on a GPU in bf16
against bitsandbytes' CUDA kernels, to the bit, and inside QLoRA training (tiny Gemma 3) against the same training
through bitsandbytes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("bitsandbytes")

CASES = """
import torch
from bitsandbytes.functional import dequantize_4bit, quantize_4bit
from adapters.lora_addmm import laid_out
from harness.kernels.nf4 import kernel_dequantize

def check(device, dtype):
    generator = torch.Generator().manual_seed(0)
    # sizes not a multiple of the 64-value block nor of the kernel's 16 x 256 tile, then rows of whole blocks (their
    # scales loaded once a block); each layout; weights stacked
    for rows, cols, nested in [([300], 20, True), ([30], 520, True), ([33], 70, False), ([24], 10, True),
                               ([40], 42, True), ([50, 21, 21], 30, True), ([9, 12], 66, False),
                               ([20], 576, True), ([33], 128, False)]:
        weights = [(torch.randn(n, cols, generator=generator) * 0.1).to(device, dtype) for n in rows]
        lora_a = torch.randn(4, cols, generator=generator).to(device, dtype)
        lora_b = torch.randn(sum(rows), 4, generator=generator).to(device, dtype)
        quantized = [quantize_4bit(weight, quant_type="nf4", compress_statistics=nested) for weight in weights]
        stacked = torch.cat([dequantize_4bit(packed, state).to(dtype) for packed, state in quantized])
        want = laid_out(stacked, lora_a, lora_b)
        kind = "input" if want.shape[1] > cols else "gradient" if want.shape[0] > sum(rows) else "plain"
        right, below = (lora_b if kind == "input" else None), (lora_a if kind == "gradient" else None)
        got = kernel_dequantize([q[0] for q in quantized], [q[1] for q in quantized], dtype, right, below)
        print(rows, cols, nested, kind, torch.equal(got, want), float((got.float() - want.float()).abs().max()))
"""


def _assert_exact(output: str, count: int) -> None:
    lines = output.split("\n")[:-1]
    assert len(lines) == count, output
    assert all(line.split()[-2] == "True" for line in lines), output
    assert {line.split()[-3] for line in lines} == {"input", "gradient", "plain"}


def test_kernel_gives_bitsandbytes_values_in_the_interpreter() -> None:
    env = os.environ | {"TRITON_INTERPRET": "1"}
    script = textwrap.dedent(CASES) + "\ncheck('cpu', torch.float32)\n"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_exact(done.stdout, 9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_kernel_gives_bitsandbytes_values_to_the_bit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CASES) + "\ncheck('cuda', torch.bfloat16)\n"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_exact(done.stdout, 9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_qlora_step_through_the_kernel_gives_the_same_gradients(
    tiny_gemma3: Callable[..., torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's QLoRA model on a GPU, bf16, `lora_addmm`: every NF4 weight through the kernel, then through
    bitsandbytes' dequantization and a copy; the same values, so the same loss and LoRA gradients, to the bit."""
    from adapters.config import TrainConfig
    from adapters.loss import supervised_nll
    from adapters.packing import collate
    from adapters.tokenize import TokenizedExample
    from adapters.trainer import build_model
    from harness.kernels import nf4

    tiny_gemma3(width=64).save_pretrained(tmp_path / "tiny")
    rows = [[TokenizedExample(input_ids=[(7 * i + 3 * row) % 500 + 1 for i in range(32)], labels=[5] * 32, line=1)]
            for row in range(2)]  # fmt: skip
    batch = collate(rows, pad_id=0).to(torch.device("cuda"))
    results = []
    for kernel in (True, False):
        monkeypatch.setattr(nf4, "KERNEL", kernel)
        config = TrainConfig(model=str(tmp_path / "tiny"), quant="nf4", device="cuda", lora_r=4, lora_dropout=0.0,
                             lora_addmm=True)  # fmt: skip
        model, _ = build_model(config)
        torch.manual_seed(1)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(std=0.1)
        with torch.profiler.profile() as profile:
            loss = supervised_nll(model.train(), batch)  # type: ignore[arg-type]
            loss.backward()
        kernels = sum(e.count for e in profile.key_averages() if e.key == "harness::nf4_dequantize")
        assert kernels == (10 if kernel else 0)  # q, k, v as one; o; gate; up; down: x 2 layers
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss, grads), (plain_loss, plain_grads) = results
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys() and len(grads) == 2 * 7 * 2  # A and B of 7 projections, 2 layers
    for name, grad in plain_grads.items():
        assert torch.equal(grads[name], grad), name
