"""NF4 weights dequantized on a GPU by one Triton kernel straight into a wider matrix, for `lora_linear`'s widened
layouts (adapters/lora_addmm.py): `[W | B]` or `[W ; A]` without a copy of W to put them side by side.

bitsandbytes dequantizes a double-quantized NF4 weight with two kernels (the blocks' absolute maxima, then the
weight) into a new contiguous [out x in] matrix; widening it then copies all of it again. Here one kernel reads
the packed codes, the 8-bit block maxima and their fp32 scales and writes each value where it goes, rows as far
apart as the wider matrix needs; the LoRA columns (or rows) are copied in beside them. A program takes a tile of
rows: each byte loaded once and its two values written side by side, and where blocks start on rows (widths a
multiple of the block) a block's scale loaded once for its bytes. The arithmetic is bitsandbytes' own, in the
same order and in fp32 (no fused multiply-add), so the values are the same to the bit. On the 2B shape's weights
it takes about 40% of bitsandbytes' time plus the copy (BENCHMARKS.md, runs 86-90).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

ROWS, PAIRS, WARPS = 16, 128, 4  # a Triton program's tile (16 rows of 256 values: 128 bytes, two values each), warps
KERNEL = True  # False: bitsandbytes' dequantization and a copy (bench/train_speed.py -bnb compares)


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def dequantize(
        packed, absmax, absmax2, code2, offset, code, out, rows, cols, half, stride,
        BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, ROWS: tl.constexpr,
        PAIRS: tl.constexpr, GROUP: tl.constexpr, SHARED: tl.constexpr,
    ):  # fmt: skip
        # a tile of ROWS x PAIRS bytes in groups of GROUP; a byte holds its row's values 2 pair and 2 pair + 1
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None, None]
        group = tl.program_id(1) * PAIRS + tl.arange(0, PAIRS // GROUP)[None, :, None] * GROUP
        pair = group + tl.arange(0, GROUP)[None, None, :]
        inside = (row < rows) & (pair < half)
        byte = tl.load(packed + row * half + pair, mask=inside, other=0).to(tl.int32)  # W's row-major order
        first = group if SHARED else pair  # SHARED: a group's bytes lie in one block, its scale loaded once
        known = (row < rows) & (first < half)
        block = (row * cols + 2 * first) // BLOCKSIZE  # BLOCKSIZE is even: a byte's two values share it
        if NESTED:  # the block maxima are 8-bit codes scaled per BLOCKSIZE2 blocks, plus their mean
            scale = tl.load(code2 + tl.load(absmax + block, mask=known, other=0).to(tl.int32), mask=known, other=0.0)
            scale = scale * tl.load(absmax2 + block // BLOCKSIZE2, mask=known, other=0.0) + tl.load(offset)
        else:
            scale = tl.load(absmax + block, mask=known, other=0.0)
        high = tl.load(code + (byte >> 4), mask=inside, other=0.0) * scale
        low = tl.load(code + (byte & 15), mask=inside, other=0.0) * scale
        col = 2 * group + tl.arange(0, 2 * GROUP)[None, None, :]
        values = tl.interleave(high, low).to(out.dtype.element_ty)
        tl.store(out + row * stride + col, values, mask=(row < rows) & (col < cols))

    return dequantize


@torch.library.custom_op("harness::nf4_dequantize", mutates_args=())
def nf4_dequantize(
    packed: list[torch.Tensor],
    absmax: list[torch.Tensor],
    absmax2: list[torch.Tensor],
    code2: list[torch.Tensor],
    offset: list[torch.Tensor],
    code: torch.Tensor,
    rows: list[int],
    cols: int,
    blocksize: int,
    blocksize2: int,
    dtype: torch.dtype,
    right: torch.Tensor | None,
    below: torch.Tensor | None,
) -> torch.Tensor:
    """The weights (each `rows[i]` x `cols`, `cols` even: a byte's two values in one row) stacked in `dtype`,
    with `right` beside them (`[W | right]`) or `below` under them (`[W ; below]`) where given. Nested
    (double-quantized) where absmax2, code2 and offset are given (one per weight)."""
    out = packed[0].new_empty(_shape(rows, cols, right, below), dtype=dtype)
    nested = bool(absmax2)
    group = min(blocksize // 2, PAIRS)  # bytes of one block (where blocks start on rows), of a tile at most
    start = 0
    for index, (weight, count) in enumerate(zip(packed, rows, strict=True)):
        scales = (absmax2[index], code2[index], offset[index]) if nested else (absmax[index], code, absmax[index])
        _kernel()[(-(-count // ROWS), -(-cols // (2 * PAIRS)))](
            weight, absmax[index], *scales, code, out[start:], count, cols, cols // 2, out.stride(0),
            BLOCKSIZE=blocksize, BLOCKSIZE2=blocksize2, NESTED=nested, ROWS=ROWS, PAIRS=PAIRS, GROUP=group,
            SHARED=cols % blocksize == 0, num_warps=WARPS, enable_fp_fusion=False,
        )  # fmt: skip
        start += count
    if right is not None:
        out[:, cols:] = right
    if below is not None:
        out[start:] = below
    return out


def _shape(rows: list[int], cols: int, right: torch.Tensor | None, below: torch.Tensor | None) -> tuple[int, int]:
    return sum(rows) + (0 if below is None else below.shape[0]), cols + (0 if right is None else right.shape[1])


@nf4_dequantize.register_fake
def _(
    packed: list[torch.Tensor],
    absmax: list[torch.Tensor],
    absmax2: list[torch.Tensor],
    code2: list[torch.Tensor],
    offset: list[torch.Tensor],
    code: torch.Tensor,
    rows: list[int],
    cols: int,
    blocksize: int,
    blocksize2: int,
    dtype: torch.dtype,
    right: torch.Tensor | None,
    below: torch.Tensor | None,
) -> torch.Tensor:
    return packed[0].new_empty(_shape(rows, cols, right, below), dtype=dtype)


def dequantize(
    packed: list[torch.Tensor],
    states: list[Any],
    dtype: torch.dtype,
    right: torch.Tensor | None,
    below: torch.Tensor | None,
) -> torch.Tensor | None:
    """bitsandbytes' NF4 weights (`packed`, their `quant_state`s) of one width, stacked and dequantized into
    `[W | right]` or `[W ; below]` by the kernel; None where it does not apply (`KERNEL` off, not on a GPU, not
    NF4, no Triton, quantized unlike one another, an odd number of columns, 2^31 values or more), for the caller
    to dequantize with bitsandbytes."""
    if not KERNEL or not packed[0].is_cuda or not _has_triton():
        return None
    first = states[0]
    kinds = {(s.quant_type, s.blocksize, s.nested and s.state2.blocksize, tuple(s.shape)[1:]) for s in states}
    if len(kinds) > 1 or first.quant_type != "nf4" or len(first.shape) != 2 or first.shape[1] % 2:
        return None
    rows, cols = _shape([s.shape[0] for s in states], first.shape[1], right, below)
    if rows * cols >= 2**31:  # the kernel's offsets are int32
        return None
    return kernel_dequantize(packed, states, dtype, right, below)


def kernel_dequantize(
    packed: list[torch.Tensor],
    states: list[Any],
    dtype: torch.dtype,
    right: torch.Tensor | None,
    below: torch.Tensor | None,
) -> torch.Tensor:
    """`dequantize` without its checks: the operator called with the quant states' tensors (on any device that
    runs the kernel, Triton's CPU interpreter included)."""
    first = states[0]
    nested = [s for s in states if s.nested]
    return nf4_dequantize(
        packed, [s.absmax for s in states], [s.state2.absmax for s in nested], [s.state2.code for s in nested],
        [s.offset for s in nested], first.code.to(packed[0].device), [s.shape[0] for s in states], first.shape[1],
        first.blocksize, first.state2.blocksize if first.nested else 1, dtype, right, below,
    )  # fmt: skip


@functools.cache
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
