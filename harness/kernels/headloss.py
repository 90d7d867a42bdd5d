"""The LM head's negative log-likelihood at chosen positions, without ever holding [tokens x vocab] logits.

Gemma's vocabulary is 262k: full logits for 8 x 1024 tokens are 8.6 GB in fp32, so the head runs a chunk of rows
at a time, each chunk's fp32 logits bounded by LOGIT_CHUNK_BYTES.

Training (the head frozen, as under LoRA) uses a fused path: each chunk computes its NLL *and* the gradient with
respect to its hidden states (softmax - one-hot, through Gemma 2's final soft-cap, times the head's weight) in the
forward pass, and backward only scales that stored gradient. The head's matmul runs twice per chunk (logits,
gradient) instead of three times (logits, recomputed logits, gradient) and nothing the size of the logits
outlives its chunk.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any, TypeGuard

import torch
from torch.utils.checkpoint import checkpoint

LOGIT_CHUNK_BYTES = 256 * 2**20
LSE_SLICES = 64
FUSED_KERNEL = (
    True  # scoring on a GPU through harness.kernels.head_kernel; False keeps the chunked path (for comparisons)
)
LSE_KERNEL = True  # training's head on a GPU: the log-sum-exp through harness.kernels.head_kernel; False: compiled here
CAPPED_ONE_PASS = True  # a soft-capped training head on a GPU: one pass over each chunk's logits (_FusedHeadNLL)


def output_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """The decoder stack, the LM head and the final logit soft-cap (Gemma 2) of a causal LM (or PEFT wrapper)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return causal_lm.get_decoder(), causal_lm.get_output_embeddings(), softcap


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that one chunk's fp32 logits stay within LOGIT_CHUNK_BYTES."""
    return max(1, LOGIT_CHUNK_BYTES // (4 * vocab_size))


def _capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = logits.float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _logsumexp(capped: torch.Tensor) -> torch.Tensor:
    """Row log-sum-exp in two stages, over LSE_SLICES slices of the vocabulary and then over the slices. Compiled,
    one stage-one program per slice instead of one per row keeps the GPU's memory busy: with one per row, a
    chunk's few hundred programs streamed 262k logits each, and the head's pointwise work took 3x as long."""
    rows, vocab = capped.shape
    if vocab % LSE_SLICES:
        return torch.logsumexp(capped, dim=-1)
    return torch.logsumexp(torch.logsumexp(capped.view(rows, LSE_SLICES, -1), dim=-1), dim=-1)


def _nll_and_lse(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, ...]:
    """Per-row NLL (fp32) of `targets` under one chunk of raw logits, Gemma 2's soft-cap applied, and the rows'
    log-sum-exp."""
    capped = _capped(logits, softcap)
    lse = _logsumexp(capped)
    return lse - capped.gather(1, targets[:, None])[:, 0], lse


def _row_nll(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return _nll_and_lse(logits, targets, softcap)[0]


def _dlogits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """The per-row NLL's gradient with respect to the raw logits (softmax - one-hot, through the soft-cap), in
    the logits' dtype. Compiled apart from _nll_and_lse: compiled together, the second stage of the log-sum-exp
    was fused into this pointwise kernel and recomputed for every logit, which made it compute-bound (3x the
    time of reading the logits and writing the gradient)."""
    capped = _capped(logits, softcap)
    # A comparison rather than a scatter, so that a compiled version stays one pointwise kernel that writes bf16
    # (a scatter would split it and write fp32 first).
    vocab = torch.arange(capped.shape[1], device=capped.device)
    dlogits = torch.exp(capped - lse[:, None]) - (vocab[None, :] == targets[:, None]).to(capped.dtype)
    if softcap:
        dlogits = dlogits * (1 - (capped / softcap) ** 2)  # d tanh(x / c) * c / dx
    return dlogits.to(logits.dtype)


@functools.cache
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` compiled with the row count symbolic and the vocabulary size a constant. With the vocabulary symbolic
    too (`dynamic=True`), every element's row and column came from a 64-bit division by a runtime value, and the
    head's pointwise kernels ran at half the memory's speed."""
    compiled = torch.compile(fn, dynamic=False)

    def rows_dynamic(*args: Any) -> Any:
        for arg in args:
            if isinstance(arg, torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(arg, 0)
        return compiled(*args)

    return rows_dynamic


def _nll_and_lse_kernel(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> tuple[torch.Tensor, ...]:
    """_nll_and_lse with the log-sum-exp in one read of the logits (harness.kernels.head_kernel.logits_nll_and_lse)."""
    from harness.kernels.head_kernel import logits_nll_and_lse

    return logits_nll_and_lse(logits, targets, softcap)


def _triton_on(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and importlib.util.find_spec("triton") is not None


def _kernel(fn: Callable[..., Any], tensor: torch.Tensor) -> Callable[..., Any]:
    """On a GPU, `fn` compiled: the upcast, soft-cap, log-sum-exp and gather read the bf16 logits once instead of
    materialising fp32 copies (which made the head's chunks memory-bound). On a CPU, eager."""
    return _compiled(fn) if tensor.is_cuda else fn


def token_nll(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None
) -> torch.Tensor:
    """Per-row NLL (fp32, no gradient) of `targets` given final hidden states [rows, hidden].

    On a GPU with Triton, a plain linear head goes through harness.kernels.head_kernel, which never writes the logits.
    Otherwise the head runs in chunks; on a GPU they are 4x larger: the compiled kernel keeps no fp32 copy and
    nothing is kept for a backward pass."""
    if FUSED_KERNEL and _plain_linear(head) and _triton_on(hidden):
        from harness.kernels.head_kernel import linear_nll

        with torch.no_grad():
            return linear_nll(hidden, head.weight, targets, softcap)
    rows = chunk_rows(_vocab_size(head)) * (4 if hidden.is_cuda else 1)
    row_nll = _kernel(_row_nll, hidden)
    with torch.no_grad():
        losses = [
            row_nll(head(hidden[start : start + rows]), targets[start : start + rows], softcap)
            for start in range(0, hidden.shape[0], rows)
        ]
    return torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32)


def token_nll_and_greedy(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row NLL (fp32, no gradient) of `targets`, and whether each target is its row's argmax token (what greedy
    decoding would pick). The head runs in chunks bounded by LOGIT_CHUNK_BYTES: only scored rows are given."""
    rows = chunk_rows(_vocab_size(head)) * (4 if hidden.is_cuda else 1)
    nll, greedy = [], []
    with torch.no_grad():
        for start in range(0, hidden.shape[0], rows):
            capped = _capped(head(hidden[start : start + rows]), softcap)
            chunk_targets = targets[start : start + rows]
            nll.append(_logsumexp(capped) - capped.gather(1, chunk_targets[:, None])[:, 0])
            greedy.append(capped.argmax(dim=-1) == chunk_targets)
    if not nll:
        return hidden.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool, device=hidden.device)
    return torch.cat(nll), torch.cat(greedy)


def summed_nll(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    softcap: float | None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed NLL (fp32 scalar) of `targets`; differentiable with respect to `hidden`. `weights` (0 or 1 per row)
    leave rows out without changing any shape (a CUDA graph's loss takes every position, masked).

    A frozen linear head takes the fused path; a trainable or non-linear head (a LoRA-wrapped or quantized one)
    falls back to checkpointed chunks, whose logits are recomputed in the backward pass."""
    if not torch.is_grad_enabled() or not hidden.requires_grad:
        return _weighted_sum(token_nll(hidden, targets, head, softcap), weights)
    if _plain_linear(head) and not head.weight.requires_grad:
        return _FusedHeadNLL.apply(hidden, head.weight, targets, softcap, weights)
    rows = chunk_rows(_vocab_size(head))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        window = slice(start, start + rows)
        chunk = (head, hidden[window], targets[window], softcap, weights, window)
        total = total + checkpoint(_head_chunk_nll, *chunk, use_reentrant=False)
    return total


def _weighted_sum(nll: torch.Tensor, weights: torch.Tensor | None, window: slice = slice(None)) -> torch.Tensor:
    """The rows' NLL summed, each row times its weight in `weights[window]` where weights are given."""
    return nll.sum() if weights is None else (nll * weights[window]).sum()


def _head_chunk_nll(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None,
    weights: torch.Tensor | None,
    window: slice,
) -> torch.Tensor:
    return _weighted_sum(_row_nll(head(hidden), targets, softcap), weights, window)


def _plain_linear(head: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    return isinstance(head, torch.nn.Linear) and head.bias is None


def _vocab_size(head: torch.nn.Module) -> int:
    weight = head.weight
    assert isinstance(weight, torch.Tensor)
    return int(getattr(head, "out_features", 0) or weight.shape[0])


class _FusedHeadNLL(torch.autograd.Function):
    """Summed NLL whose gradient with respect to the hidden states is computed chunk by chunk in forward.

    Soft-capped on a GPU (Gemma 2), each chunk's logits are read once (head_kernel.capped_nll_and_grad_terms)
    and the softmax's row normalisation and the target's term are applied in backward, once over all rows; otherwise
    each chunk takes a log-sum-exp pass and then a gradient pass."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        softcap: float | None,
        row_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        rows = chunk_rows(weight.shape[0])
        one_pass = _one_pass(hidden, softcap)
        nll_and_lse = _nll_and_lse_kernel if LSE_KERNEL and _triton_on(hidden) else _kernel(_nll_and_lse, hidden)
        dlogits_of = _kernel(_dlogits, hidden)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        empty = hidden.new_zeros(0, dtype=torch.float32)
        terms: list[tuple[torch.Tensor, torch.Tensor]] = [(empty, empty)]
        for start in range(0, hidden.shape[0], rows):
            window = slice(start, start + rows)
            chunk = hidden[window]
            logits = chunk @ weight.T
            if one_pass:
                assert softcap is not None
                nll, inverse_sum, target_coef = _capped_one_pass(logits, targets[window], softcap)
                terms.append((inverse_sum, target_coef))
                grad_of_logits = logits  # overwritten by the kernel
            else:
                nll, lse = nll_and_lse(logits, targets[window], softcap)
                grad_of_logits = dlogits_of(logits, lse, targets[window], softcap)
            total += _weighted_sum(nll, row_weights, window)
            torch.matmul(grad_of_logits, weight, out=grad_hidden[window])
            # Freed before the next chunk's logits are allocated: held over, the chunk's gradient (a second
            # [rows x vocab] buffer where it is not written over the logits) put 0.125 GiB on the 270M's peak.
            del logits, grad_of_logits
        ctx.one_pass = one_pass
        if one_pass:
            inverse_sums, target_coefs = (torch.cat(parts) for parts in zip(*terms, strict=True))  # rows' order
            ctx.save_for_backward(grad_hidden, row_weights, inverse_sums, target_coefs, targets, weight)
        else:
            ctx.save_for_backward(grad_hidden, row_weights)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, row_weights, *terms = ctx.saved_tensors
        # The rows' weights, applied here rather than per chunk.
        scale = grad_total if row_weights is None else row_weights * grad_total
        if not ctx.one_pass:
            grad = grad_hidden.float() * (scale if scale.dim() == 0 else scale[:, None])
            return grad.to(grad_hidden.dtype), None, None, None, None
        inverse_sums, target_coefs, targets, weight = terms
        grad = grad_hidden.float() * (inverse_sums * scale)[:, None]
        grad.addcmul_(weight[targets], (target_coefs * scale)[:, None])
        return grad.to(grad_hidden.dtype), None, None, None, None


def _capped_one_pass(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> tuple[torch.Tensor, ...]:
    from harness.kernels.head_kernel import capped_nll_and_grad_terms

    return capped_nll_and_grad_terms(logits, targets, softcap)


def _one_pass(hidden: torch.Tensor, softcap: float | None) -> bool:
    """Whether training's head takes harness.kernels.head_kernel's one pass over each chunk of soft-capped logits."""
    if not (CAPPED_ONE_PASS and softcap and _triton_on(hidden)):
        return False
    from harness.kernels.head_kernel import MAX_EXP_SHIFT_CAP

    return softcap <= MAX_EXP_SHIFT_CAP
