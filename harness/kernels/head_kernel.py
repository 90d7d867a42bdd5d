"""The LM head's log-sum-exp fused into its matmul (Triton, GPUs): scoring without the logits.

Each program multiplies a block of hidden states by a run of vocabulary tiles, keeps the [rows x tile] logits in
registers and folds them into a running max and sum (an online log-sum-exp), so the [rows x vocab] logits never
reach device memory and nothing reads them back: the unfused head wrote them in bf16 and read them twice more. The
tiles of hidden states and weight reach shared memory through tensor descriptors (Hopper's tensor memory
accelerator): with pointer loads the kernel ran at 73-80% of cuBLAS's matmul alone (bench/head_kernel.py, run 100),
with descriptors at 84-93%. The vocabulary is split across programs as well, and the programs running at one time are
the splits of a few row blocks: those blocks' hidden states stay in L2 while the head's weight streams past (with
row blocks outermost, a 2B model's hidden states for 16k rows overflow L2 and are re-read from memory for every
vocabulary tile). The splits' partial sums are combined afterwards. Logits stay fp32 from the matmul's accumulator
on. Soft-capped logits are bounded by the cap, so their sum of exp(logit - cap) needs no running max.

Training writes each chunk's logits anyway (its gradient needs them): `logits_nll_and_lse` is the row log-sum-exp of
given logits in one read, each program folding a slice of a row into a running max and sum; compiled, inductor's
reduction read a 256-row chunk of Gemma 3's bf16 logits at about a third of the memory's speed.

Imported only where Triton is installed (GPU machines; the tests run the kernels in Triton's CPU interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch settings, and the tiles [rows x vocabulary] by hidden size: the fastest that bench/head_kernel.py found on
# an H100 at Gemma 3 270M's (640) and Gemma 2 2B's (2304) hidden sizes. None: chosen by hidden size.
BLOCK_M: int | None = None
BLOCK_N: int | None = None
BLOCK_K, WARPS, STAGES = 64, 8, 3
MIN_SPLITS = 16  # vocabulary splits per row block: 16 runs ~8 row blocks at a time on an H100
PROGRAMS_PER_SM = 4
# Tiles through tensor descriptors, copied by the tensor memory accelerator; None: on GPUs that have one (compute
# capability 9, Hopper, and later) and in Triton's interpreter. False: loads through pointers, as before run 100.
TMA: bool | None = None
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _capped_less_cap(logits, softcap):
    """softcap * tanh(logits / softcap) - softcap = -2 softcap / (exp(2 logits / softcap) + 1), which is <= 0, with
    exp2 and a fast reciprocal: an IEEE division is a dozen instructions per logit, more than the rest of the
    epilogue, and the epilogue of the head's matmul runs between its tiles' matmuls."""
    return tl.fdiv(-2.0 * softcap, tl.exp2(logits * (2.0 * LOG2E / softcap)) + 1.0, ieee_rounding=False)


@triton.jit
def _softcapped(logits, softcap):
    """Gemma 2's final soft-cap, softcap * tanh(logits / softcap)."""
    return softcap + _capped_less_cap(logits, softcap)


@triton.jit
def _partial_lse(
    hidden,
    weight,
    part_max,
    part_sum,
    rows,
    vocab,
    dim,
    split_size,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TMA: tl.constexpr,
):
    """Running max and sum of exp(logit - max) of BLOCK_M rows over one split of the vocabulary; `TMA`: hidden
    and weight are tensor descriptors, their tiles copied by the tensor memory accelerator (zeros past the ends)."""
    split, block = tl.program_id(0), tl.program_id(1)
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    first = split * split_size
    end = tl.minimum(first + split_size, vocab)
    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    for start in range(first, end, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        logits = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k in range(0, dim, BLOCK_K):
            if TMA:
                h, w = hidden.load([block * BLOCK_M, k]), weight.load([start, k]).T
            else:
                offs_k = k + tl.arange(0, BLOCK_K)
                h = tl.load(
                    hidden + offs_m[:, None] * dim + offs_k[None, :],
                    mask=(offs_m[:, None] < rows) & (offs_k[None, :] < dim),
                    other=0.0,
                )
                w = tl.load(
                    weight + offs_n[None, :] * dim + offs_k[:, None],
                    mask=(offs_n[None, :] < end) & (offs_k[:, None] < dim),
                    other=0.0,
                )
            logits = tl.dot(h, w, logits, input_precision=PRECISION)
        if HAS_SOFTCAP:  # capped logits are at most softcap: a sum of exp(logit - softcap) needs no running max
            shifted = tl.exp2(_capped_less_cap(logits, softcap) * LOG2E)
            running_sum += tl.sum(tl.where(offs_n[None, :] < end, shifted, 0.0), 1)
        else:
            logits = tl.where(offs_n[None, :] < end, logits * LOG2E, float("-inf"))  # in base 2 from here
            new_max = tl.maximum(running_max, tl.max(logits, 1))
            running_sum = running_sum * tl.exp2(running_max - new_max) + tl.sum(tl.exp2(logits - new_max[:, None]), 1)
            running_max = new_max
    if HAS_SOFTCAP:
        running_max = tl.full([BLOCK_M], 0.0, tl.float32) + softcap
    else:
        running_max = running_max / LOG2E
    tl.store(part_max + split * rows + offs_m, running_max, mask=offs_m < rows)
    tl.store(part_sum + split * rows + offs_m, running_sum, mask=offs_m < rows)


def linear_logsumexp(hidden: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """logsumexp(softcap(hidden @ weight.T), dim=-1) in fp32, for hidden [rows, dim] and weight [vocab, dim]."""
    hidden, weight = hidden.contiguous(), weight.contiguous()
    (rows, dim), vocab = hidden.shape, weight.shape[0]
    if rows == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    block_m, block_n = (BLOCK_M or 128, BLOCK_N or 256) if dim <= 1024 else (BLOCK_M or 256, BLOCK_N or 128)
    blocks = triton.cdiv(rows, block_m)
    programs = PROGRAMS_PER_SM * _multiprocessors(hidden.device)
    splits = max(1, min(max(MIN_SPLITS, triton.cdiv(programs, blocks)), triton.cdiv(vocab, block_n)))
    split_size = triton.cdiv(triton.cdiv(vocab, splits), block_n) * block_n
    splits = triton.cdiv(vocab, split_size)
    part_max = torch.empty(splits, rows, dtype=torch.float32, device=hidden.device)
    part_sum = torch.empty_like(part_max)
    tma = (_has_tma(hidden.device) if TMA is None else TMA) and all(map(_tma_aligned, (hidden, weight)))
    operands: tuple[object, object] = (hidden, weight)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        operands = (
            TensorDescriptor.from_tensor(hidden, [block_m, BLOCK_K]),
            TensorDescriptor.from_tensor(weight, [block_n, BLOCK_K]),
        )
    precision = "ieee" if hidden.dtype == torch.float32 else "tf32"
    _partial_lse[(splits, blocks)](
        *operands, part_max, part_sum, rows, vocab, dim, split_size, float(softcap or 1.0),
        HAS_SOFTCAP=bool(softcap), PRECISION=precision,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK_K, TMA=tma, num_warps=WARPS, num_stages=STAGES,
    )  # fmt: skip
    overall = part_max.max(dim=0).values
    return overall + torch.log((part_sum * torch.exp(part_max - overall)).sum(dim=0))


def linear_nll(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    """Per-row NLL (fp32) of `targets` under the logits softcap(hidden @ weight.T)."""
    target_logit = (hidden.float() * weight[targets].float()).sum(dim=-1)
    if softcap:
        target_logit = torch.tanh(target_logit / softcap) * softcap
    return linear_logsumexp(hidden, weight, softcap) - target_logit


def _has_tma(device: torch.device) -> bool:
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 9


def _tma_aligned(tensor: torch.Tensor) -> bool:
    """Whether a descriptor can address `tensor`: its start and its rows' stride on 16-byte boundaries."""
    return tensor.data_ptr() % 16 == 0 and tensor.stride(0) * tensor.element_size() % 16 == 0


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


# Row slices per program and elements per load of logits_nll_and_lse; bench/head_kernel.py --lse times others.
LSE_SLICE, LSE_BLOCK, LSE_WARPS = 16_384, 4096, 8


@triton.jit
def _slice_lse(
    logits,
    part_max,
    part_sum,
    rows,
    vocab,
    row_stride,
    slice_size,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Running max and sum of exp(logit - max) of one row over one slice of the vocabulary, in one read."""
    row, part = tl.program_id(0), tl.program_id(1)
    first = part * slice_size
    end = tl.minimum(first + slice_size, vocab)
    start_of_row = logits + row.to(tl.int64) * row_stride
    running_max = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), 0)
    running_sum = tl.sum(tl.zeros([BLOCK], tl.float32), 0)
    for start in range(first, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        block = tl.load(start_of_row + offs, mask=offs < end, other=float("-inf")).to(tl.float32)
        if HAS_SOFTCAP:
            block = tl.where(offs < end, _softcapped(block, softcap), float("-inf"))
        new_max = tl.maximum(running_max, tl.max(block, 0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(block - new_max), 0)
        running_max = new_max
    tl.store(part_max + part * rows + row, running_max)
    tl.store(part_sum + part * rows + row, running_sum)


@triton.jit
def _rows_nll(
    part_max,
    part_sum,
    logits,
    targets,
    nll,
    lse,
    rows,
    slices,
    row_stride,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    SLICES: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    """Rows' log-sum-exp from their slices' running maxima and sums, and their NLL of the target token."""
    offs_r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    offs_s = tl.arange(0, SLICES)
    in_rows = offs_r < rows
    parts = offs_s[:, None] * rows + offs_r[None, :]
    mask = (offs_s[:, None] < slices) & in_rows[None, :]
    maxima = tl.load(part_max + parts, mask=mask, other=float("-inf"))
    overall = tl.max(maxima, 0)
    sums = tl.load(part_sum + parts, mask=mask, other=0.0) * tl.exp(maxima - overall[None, :])
    row_lse = overall + tl.log(tl.sum(sums, 0))
    target = tl.load(targets + offs_r, mask=in_rows, other=0)
    picked = tl.load(logits + offs_r.to(tl.int64) * row_stride + target, mask=in_rows, other=0.0).to(tl.float32)
    if HAS_SOFTCAP:
        picked = _softcapped(picked, softcap)
    tl.store(lse + offs_r, row_lse, mask=in_rows)
    tl.store(nll + offs_r, row_lse - picked, mask=in_rows)


def logits_nll_and_lse(
    logits: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row NLL of `targets` and log-sum-exp, both fp32, under softcap(logits) for logits [rows, vocab] whose
    rows are contiguous: two launches, the slices' pass over the logits and one that combines the slices and
    picks each row's target logit (as separate torch operations these were half a dozen launches per chunk)."""
    (rows, vocab), slice_size = logits.shape, LSE_SLICE
    assert logits.stride(1) == 1, "the kernel reads each row as one run of memory"
    nll, lse = (torch.empty(rows, dtype=torch.float32, device=logits.device) for _ in range(2))
    if rows == 0:
        return nll, lse
    slices = triton.cdiv(vocab, slice_size)
    part_max = torch.empty(slices, rows, dtype=torch.float32, device=logits.device)
    part_sum = torch.empty_like(part_max)
    capped, cap = bool(softcap), float(softcap or 1.0)
    _slice_lse[(rows, slices)](
        logits, part_max, part_sum, rows, vocab, logits.stride(0), slice_size, cap, HAS_SOFTCAP=capped,
        BLOCK=min(LSE_BLOCK, triton.next_power_of_2(slice_size)), num_warps=LSE_WARPS,
    )  # fmt: skip
    block_rows = 64
    _rows_nll[(triton.cdiv(rows, block_rows),)](
        part_max, part_sum, logits, targets, nll, lse, rows, slices, logits.stride(0), cap, HAS_SOFTCAP=capped,
        SLICES=triton.next_power_of_2(slices), BLOCK_ROWS=block_rows,
    )  # fmt: skip
    return nll, lse


# A soft-capped logit exceeds -softcap, so exp(capped - softcap) >= exp(-2 softcap): a normal float32 up to here.
MAX_EXP_SHIFT_CAP = 43.0


@triton.jit
def _capped_exp_slice(
    logits,
    targets,
    part_sum,
    target_logit,
    rows,
    vocab,
    row_stride,
    slice_size,
    softcap,
    BLOCK: tl.constexpr,
):
    """One row's slice of soft-capped logits, in place: each logit replaced by exp(capped - softcap) times the
    soft-cap's derivative (the target's by 0), those exps summed (the target's left out), and the target's raw
    logit stored by the slice that holds it. With r = 1 / (exp(2 x / softcap) + 1): capped - softcap = -2 softcap
    r and 1 - tanh^2 = 4 r (1 - r)."""
    row, part = tl.program_id(0), tl.program_id(1)
    target = tl.load(targets + row)
    first = part * slice_size
    end = tl.minimum(first + slice_size, vocab)
    start_of_row = logits + row.to(tl.int64) * row_stride
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(first, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < end
        raw = tl.load(start_of_row + offs, mask=inside, other=0.0)
        x = raw.to(tl.float32)
        r = tl.fdiv(1.0, tl.exp2(x * (2.0 * LOG2E / softcap)) + 1.0, ieee_rounding=False)
        shifted = tl.where(inside & (offs != target), tl.exp2(r * (-2.0 * LOG2E * softcap)), 0.0)
        total += shifted
        tl.store(start_of_row + offs, (shifted * (4.0 * r * (1.0 - r))).to(raw.dtype), mask=inside)
        tl.store(target_logit + row + offs * 0, x, mask=inside & (offs == target))
    tl.store(part_sum + part * rows + row, tl.sum(total, 0))


@triton.jit
def _capped_rows(
    part_sum,
    target_logit,
    nll,
    inverse_sum,
    target_coef,
    rows,
    slices,
    softcap,
    SLICES: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    """Rows' sums from their slices', the target's exp added: the NLL, 1 / sum, and the target logit's gradient
    -(others' sum / sum) * (1 - tanh^2), without the cancellation of p - 1 when p is near 1."""
    offs_r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    offs_s = tl.arange(0, SLICES)
    in_rows = offs_r < rows
    mask = (offs_s[:, None] < slices) & in_rows[None, :]
    others = tl.sum(tl.load(part_sum + offs_s[:, None] * rows + offs_r[None, :], mask=mask, other=0.0), 0)
    less_cap = _capped_less_cap(tl.load(target_logit + offs_r, mask=in_rows, other=0.0), softcap)
    total = others + tl.exp2(less_cap * LOG2E)
    tanh = 1.0 + less_cap / softcap
    tl.store(nll + offs_r, tl.log(total) - less_cap, mask=in_rows)
    tl.store(inverse_sum + offs_r, 1.0 / total, mask=in_rows)
    tl.store(target_coef + offs_r, -(others / total) * (1.0 - tanh * tanh), mask=in_rows)


def capped_nll_and_grad_terms(
    logits: torch.Tensor, targets: torch.Tensor, softcap: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training's soft-capped head in one pass over a chunk's logits [rows, vocab] (rows contiguous), no log-sum-exp
    first: since softcap bounds the capped logits, exp(capped - softcap) needs no row maximum, and the softmax's
    normalisation (a row scalar) can wait until after the gradient's matmul. The logits are overwritten with
    E = exp(capped - softcap) * (1 - tanh^2), the target's column 0. Returns the rows' NLL, 1 / sum of exps and the
    target column's coefficient c (fp32), so that the gradient with respect to hidden states h (logits = h W^T) is
    (E W) / sum + c W[target]."""
    (rows, vocab), slice_size = logits.shape, LSE_SLICE
    assert logits.stride(1) == 1, "the kernel reads each row as one run of memory"
    assert softcap <= MAX_EXP_SHIFT_CAP, f"exp(-2 * {softcap}) underflows float32"
    nll, inverse_sum, target_coef, target_logit = (
        torch.empty(rows, dtype=torch.float32, device=logits.device) for _ in range(4)
    )
    if rows == 0:
        return nll, inverse_sum, target_coef
    slices = triton.cdiv(vocab, slice_size)
    part_sum = torch.empty(slices, rows, dtype=torch.float32, device=logits.device)
    _capped_exp_slice[(rows, slices)](
        logits, targets, part_sum, target_logit, rows, vocab, logits.stride(0), slice_size, float(softcap),
        BLOCK=min(LSE_BLOCK, triton.next_power_of_2(slice_size)), num_warps=LSE_WARPS,
    )  # fmt: skip
    block_rows = 64
    _capped_rows[(triton.cdiv(rows, block_rows),)](
        part_sum, target_logit, nll, inverse_sum, target_coef, rows, slices, float(softcap),
        SLICES=triton.next_power_of_2(slices), BLOCK_ROWS=block_rows,
    )  # fmt: skip
    return nll, inverse_sum, target_coef
