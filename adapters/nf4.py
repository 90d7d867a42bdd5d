"""NF4 weights dequantized on a GPU by one Triton kernel straight into a wider matrix, for `lora_linear`'s widened
layouts (adapters/lora_addmm.py): `[W | B]` or `[W ; A]` without a copy of W to put them side by side.

bitsandbytes dequantizes a double-quantized NF4 weight with two kernels (the blocks' absolute maxima, then the
weight) into a new contiguous [out x in] matrix; widening it then copies all of it again. Here one kernel reads
the packed codes, the 8-bit block maxima and their fp32 scales and writes each value where it goes, rows as far
apart as the wider matrix needs; the LoRA columns (or rows) are copied in beside them. The arithmetic is
bitsandbytes' own, in the same order and in fp32 (no fused multiply-add), so the values are the same to the bit.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

BLOCK = 1024  # values per Triton program


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def dequantize(
        packed, absmax, absmax2, code2, offset, code, out, rows, cols, stride,
        BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # in W's row-major order
        inside = index < rows * cols
        byte = tl.load(packed + index // 2, mask=inside, other=0).to(tl.int32)
        value = tl.load(code + tl.where(index % 2 == 0, byte >> 4, byte & 15), mask=inside, other=0.0)
        block = index // BLOCKSIZE
        if NESTED:  # the block maxima are 8-bit codes scaled per BLOCKSIZE2 blocks, plus their mean
            scale = tl.load(code2 + tl.load(absmax + block, mask=inside, other=0).to(tl.int32), mask=inside, other=0.0)
            scale = scale * tl.load(absmax2 + block // BLOCKSIZE2, mask=inside, other=0.0) + tl.load(offset)
        else:
            scale = tl.load(absmax + block, mask=inside, other=0.0)
        target = out + (index // cols) * stride + index % cols
        tl.store(target, (value * scale).to(out.dtype.element_ty), mask=inside)

    return dequantize


@torch.library.custom_op("adapters::nf4_dequantize", mutates_args=())
def nf4_dequantize(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    absmax2: torch.Tensor | None,
    code2: torch.Tensor | None,
    offset: torch.Tensor | None,
    code: torch.Tensor,
    rows: int,
    cols: int,
    blocksize: int,
    blocksize2: int,
    dtype: torch.dtype,
    right: torch.Tensor | None,
    below: torch.Tensor | None,
) -> torch.Tensor:
    """The [rows x cols] weight in `dtype`, with `right` beside it (`[W | right]`) or `below` under it
    (`[W ; below]`) where given. Nested (double-quantized) where absmax2, code2 and offset are given."""
    out = packed.new_empty(_shape(rows, cols, right, below), dtype=dtype)
    nested = absmax2 is not None
    _kernel()[(-(-rows * cols // BLOCK),)](
        packed, absmax, absmax2 if nested else absmax, code2 if nested else code, offset if nested else absmax,
        code, out, rows, cols, out.stride(0), BLOCKSIZE=blocksize, BLOCKSIZE2=blocksize2, NESTED=nested, BLOCK=BLOCK,
        enable_fp_fusion=False,
    )  # fmt: skip
    if right is not None:
        out[:, cols:] = right
    if below is not None:
        out[rows:] = below
    return out


def _shape(rows: int, cols: int, right: torch.Tensor | None, below: torch.Tensor | None) -> tuple[int, int]:
    return rows + (0 if below is None else below.shape[0]), cols + (0 if right is None else right.shape[1])


@nf4_dequantize.register_fake
def _(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    absmax2: torch.Tensor | None,
    code2: torch.Tensor | None,
    offset: torch.Tensor | None,
    code: torch.Tensor,
    rows: int,
    cols: int,
    blocksize: int,
    blocksize2: int,
    dtype: torch.dtype,
    right: torch.Tensor | None,
    below: torch.Tensor | None,
) -> torch.Tensor:
    return packed.new_empty(_shape(rows, cols, right, below), dtype=dtype)


def dequantize(
    packed: torch.Tensor, state: Any, dtype: torch.dtype, right: torch.Tensor | None, below: torch.Tensor | None
) -> torch.Tensor | None:
    """bitsandbytes' NF4 weight (`packed`, its `quant_state`) dequantized into `[W | right]` or `[W ; below]` by
    the kernel; None where it does not apply (not on a GPU, not NF4, no Triton), for the caller to dequantize
    with bitsandbytes."""
    if not packed.is_cuda or state.quant_type != "nf4" or len(state.shape) != 2 or not _has_triton():
        return None
    nested = state.nested
    return nf4_dequantize(
        packed, state.absmax, state.state2.absmax if nested else None, state.state2.code if nested else None,
        state.offset if nested else None, state.code.to(packed.device), *state.shape, state.blocksize,
        state.state2.blocksize if nested else 1, dtype, right, below,
    )  # fmt: skip


@functools.cache
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
