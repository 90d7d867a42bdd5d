"""The LoRA operator's thin matmuls (adapters/lora_addmm.py: one side the rank) by cuBLAS, as the operator
calls them, against adapters/skinny.py's kernels, on one model shape's activations: µs per product (median of
CUDA-graph replays) and the memory speed that makes (every operand read once, the result written). `--sweep`
times the kernels' tiles too. A measurement for design questions, not a contender of train_speed.py.

    python bench/skinny_speed.py --shape gemma-2-2b [--sweep]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any

import torch
from common import emit, environment
from lora_groups import SHAPES
from nf4_speed import microseconds

from adapters import skinny

RANK = 16


def cases(shape: tuple[int, int, int, int], tokens: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name: (product, sizes). `inner`: x [tokens x width] @ lora_a^T (lora_a [rank x width]); `grad_a`:
    grad_inner^T @ x; `grad_b`: grad^T @ inner (grad [tokens x out]); `grad_inner`: grad @ lora_b."""
    hidden, q, kv, inter = shape
    qkv = q + 2 * kv
    return {
        "qkv inner": ("inner", (tokens, hidden, 3 * RANK)),
        "o inner": ("inner", (tokens, q, RANK)),
        "gate/up inner": ("inner", (tokens, hidden, RANK)),
        "down grad_inner": ("grad_inner", (tokens, hidden, RANK)),
        "qkv grad_a": ("grad_a", (tokens, 3 * RANK, hidden)),
        "o grad_a": ("grad_a", (tokens, RANK, q)),
        "gate/up grad_a": ("grad_a", (tokens, RANK, hidden)),
        "down grad_a": ("grad_a", (tokens, RANK, inter)),
        "qkv grad_b": ("grad_b", (tokens, 3 * RANK, qkv)),
        "o grad_b": ("grad_b", (tokens, RANK, hidden)),
        "gate/up grad_b": ("grad_b", (tokens, RANK, inter)),
        "down grad_b": ("grad_b", (tokens, RANK, hidden)),
    }


COPIES = 16  # each call reads other operands than the last: 16 x 10 MB (270M) is more than the H200 60 MB L2


def contenders(product: str, sizes: tuple[int, ...]) -> tuple[dict[str, Callable[[int], Any]], int, torch.Tensor]:
    """cuBLAS's and the kernel's calls of one product on copy i of its operands (as the operator calls them), the
    bytes it moves, and copy 0's result in fp32."""
    tokens, first, second = sizes
    cols = first if product in ("inner", "grad_inner") else second
    big = [torch.randn(tokens, cols, device="cuda", dtype=torch.bfloat16) for _ in range(COPIES)]
    if product in ("inner", "grad_inner"):
        small = torch.randn(second, first, device="cuda", dtype=torch.bfloat16)  # lora_a; lora_b^T for grad_inner
        side = small.t() if product == "inner" else small.t().contiguous()
        calls = {"cublas": lambda i: big[i] @ side, "kernel": lambda i: skinny.narrow(big[i], side)}
        reference = big[0].float() @ side.float()
    else:
        thin = [torch.randn(tokens, first, device="cuda", dtype=torch.bfloat16) for _ in range(COPIES)]
        if product == "grad_a":
            calls = {"cublas": lambda i: thin[i].t() @ big[i], "kernel": lambda i: skinny.reduced(thin[i], big[i])}
            reference = thin[0].float().t() @ big[0].float()
        else:
            calls = {
                "cublas": lambda i: big[i].t() @ thin[i],
                "kernel": lambda i: skinny.reduced(thin[i], big[i], transposed=True),
            }
            reference = big[0].float().t() @ thin[0].float()
    moved = (big[0].numel() + reference.numel() + tokens * min(first, second)) * 2
    return calls, moved, reference


def rotating(call: Callable[[int], Any]) -> float:
    """µs per call, each call on the next copy of the operands (none of them in L2 from the call before)."""
    step = itertools.count()
    return microseconds(lambda: call(next(step) % COPIES))


def tiles(sweep: bool) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
    if not sweep:
        return [(skinny.NARROW, skinny.REDUCED, skinny.SLICE_ROWS)]
    narrow = [(16, 128, 4, 3), (32, 128, 4, 3), (32, 64, 4, 4), (64, 64, 4, 3), (64, 128, 4, 3), (32, 256, 4, 2)]
    reduced = [(64, 128, 4, 3), (32, 128, 4, 3), (64, 64, 4, 4), (128, 64, 4, 3), (64, 256, 8, 3)]
    return [(n, r, s) for n, (r, s) in itertools.product(narrow, itertools.product(reduced, (256, 512, 1024)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="gemma-2-2b", choices=sorted(SHAPES))
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    emit(environment(), None)
    for name, (product, sizes) in cases(SHAPES[args.shape], args.tokens).items():
        calls, moved, reference = contenders(product, sizes)
        row = {"what": "skinny", "shape": args.shape, "case": name, "sizes": list(sizes)}
        error = float((calls["kernel"](0).float() - reference).norm() / reference.norm())
        cublas = rotating(calls["cublas"])
        timings, defaults = {}, (skinny.NARROW, skinny.REDUCED, skinny.SLICE_ROWS)
        for narrow, reduced, rows in tiles(args.sweep):
            skinny.NARROW, skinny.REDUCED, skinny.SLICE_ROWS = narrow, reduced, rows
            key = str(narrow) if product in ("inner", "grad_inner") else f"{reduced} x{rows}"
            if key not in timings:
                timings[key] = rotating(calls["kernel"])
        skinny.NARROW, skinny.REDUCED, skinny.SLICE_ROWS = defaults
        best = min(timings, key=timings.__getitem__)
        emit({**row, "cublas_us": round(cublas, 2), "kernel_us": round(timings[best], 2), "tiles": best,
              "cublas_tb_s": round(moved / cublas / 1e6, 2), "kernel_tb_s": round(moved / timings[best] / 1e6, 2),
              "error": error, "all": {k: round(v, 2) for k, v in timings.items()}}, None)  # fmt: skip


if __name__ == "__main__":
    main()
