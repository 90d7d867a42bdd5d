"""The LoRA products' thin matmuls by Triton kernels: one side of each is the rank r (16 here), so each is a read
of one large activation and nothing else, and cuBLAS runs them well below the memory's speed (its tiles are
sized for large outputs: on the 2B shape's [8192 x 2304] activations, 20 µs for `x @ lora_a^T`, about 1.8 TB/s,
and 42 µs for `grad_inner^T @ x` through split-K, under 1 TB/s; BENCHMARKS.md). Two kernels:

- `narrow`: `x @ w` for x [m x k] and w [k x r]: programs over x's rows, each reading its rows once.
- `reduced`: `g^T @ x` for g [t x r] and x [t x n], the sum over t (tokens): programs over x's columns and
  slices of t, each writing its slice's sum in fp32; the slices are then added in a fixed order (no atomics:
  the same bits every run).

Both take strided operands and compute in fp32 from their inputs' dtype, as cuBLAS does.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

NARROW = (32, 128, 4, 3)  # rows, columns of k, warps and stages of a `narrow` program
REDUCED = (64, 128, 4, 3)  # rows of t, columns of n, warps and stages of a `reduced` program
SLICE_ROWS = 512  # t per `reduced` program at most


@functools.cache
def _kernels() -> tuple[Any, Any]:
    import triton
    import triton.language as tl

    @triton.jit
    def narrow(x, w, out, m, k, r, sxm, sxk, swk, swr, BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        cols = tl.arange(0, BR)
        acc = tl.zeros((BM, BR), dtype=tl.float32)
        for start in range(0, k, BK):
            inner = start + tl.arange(0, BK)
            a = tl.load(x + rows[:, None] * sxm + inner[None, :] * sxk,
                        mask=(rows[:, None] < m) & (inner[None, :] < k), other=0.0)  # fmt: skip
            b = tl.load(w + inner[:, None] * swk + cols[None, :] * swr,
                        mask=(inner[:, None] < k) & (cols[None, :] < r), other=0.0)  # fmt: skip
            acc = tl.dot(a, b, acc)
        tl.store(out + rows[:, None] * r + cols[None, :], acc.to(out.dtype.element_ty),
                 mask=(rows[:, None] < m) & (cols[None, :] < r))  # fmt: skip

    @triton.jit
    def reduced(g, x, parts, t, r, n, per, sgt, sgr, sxt, sxn,
                BT: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr):  # fmt: skip
        cols = tl.program_id(0) * BN + tl.arange(0, BN)
        ranks = tl.arange(0, BR)
        first = tl.program_id(1) * per
        acc = tl.zeros((BR, BN), dtype=tl.float32)
        for start in range(first, tl.minimum(first + per, t), BT):
            rows = start + tl.arange(0, BT)
            inside = rows < tl.minimum(first + per, t)
            a = tl.load(g + rows[None, :] * sgt + ranks[:, None] * sgr,
                        mask=inside[None, :] & (ranks[:, None] < r), other=0.0)  # fmt: skip
            b = tl.load(x + rows[:, None] * sxt + cols[None, :] * sxn,
                        mask=inside[:, None] & (cols[None, :] < n), other=0.0)  # fmt: skip
            acc = tl.dot(a, b, acc)
        slot = parts + tl.program_id(1) * r * n
        tl.store(slot + ranks[:, None] * n + cols[None, :], acc, mask=(ranks[:, None] < r) & (cols[None, :] < n))

    return narrow, reduced


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _rank_block(r: int) -> int:
    return max(16, 1 << (r - 1).bit_length())  # tl.dot's smallest side, and a power of two


def narrow(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`x @ w` for x [m x k] and w [k x r], r small, in x's dtype."""
    m, k = x.shape
    r = w.shape[1]
    out = x.new_empty((m, r))
    rows, cols, warps, stages = NARROW
    _kernels()[0][(_ceil(m, rows),)](
        x, w, out, m, k, r, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
        BM=rows, BK=cols, BR=_rank_block(r), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def reduced(g: torch.Tensor, x: torch.Tensor, transposed: bool = False, slices: int | None = None) -> torch.Tensor:
    """`g^T @ x` for g [t x r] and x [t x n], r small, summed over t in fp32 and returned in x's dtype (its
    transpose `x^T @ g`, contiguous, where `transposed`)."""
    t, r = g.shape
    n = x.shape[1]
    rows, cols, warps, stages = REDUCED
    column_blocks = _ceil(n, cols)
    if slices is None:  # enough programs for every multiprocessor twice over, each at most SLICE_ROWS of t
        count = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 8
        slices = max(_ceil(t, SLICE_ROWS), _ceil(2 * count, column_blocks))
    per = _ceil(_ceil(t, slices), rows) * rows  # rows of t per slice, a multiple of the program's
    slices = _ceil(t, per)
    parts = x.new_empty((slices, r, n), dtype=torch.float32)
    _kernels()[1][(column_blocks, slices)](
        g, x, parts, t, r, n, per, g.stride(0), g.stride(1), x.stride(0), x.stride(1),
        BT=rows, BN=cols, BR=_rank_block(r), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    total = parts.sum(0)
    return total.t().to(x.dtype, memory_format=torch.contiguous_format) if transposed else total.to(x.dtype)
