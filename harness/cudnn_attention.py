"""Causal and sliding-window attention on cuDNN's fused flash kernels, through the cuDNN frontend (`attention:
cudnn`, what `auto` picks for training on a GPU where the frontend is installed: the `cudnn` extra).

torch's sdpa reaches the same kernels for plain causal attention (`is_causal`), but it has no sliding window: a
windowed layer (15 of Gemma 3 270M's 18) hands it a [rows x 1 x T x T] mask tensor, and with a mask cuDNN computes
every query-key block and reads the mask beside. cuDNN itself takes the window as a band around the diagonal and
skips the blocks outside it. Here the frontend's graphs (built once per shape and layout, then replayed; a CUDA
graph can capture them) run the forward and the backward as two operators opaque to the compiler.

Where the kernels do not fit (a mask tensor: packed or padded rows; dropout; a CPU; queries against a longer
cache) the layer runs transformers' sdpa instead; soft-capped logits are refused, since sdpa would drop the cap.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

NAME = "cudnn"


@functools.cache
def available() -> bool:
    """Whether the cuDNN frontend imports and a CUDA device is there."""
    if not torch.cuda.is_available():
        return False
    try:
        torch.backends.cudnn.version()  # torch loads libcudnn; the frontend then finds it already loaded
        import cudnn  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@functools.cache
def _handle(device_index: int) -> Any:
    import cudnn

    with torch.cuda.device(device_index):
        return cudnn.create_handle()


def _masks(window: int) -> dict[str, Any]:
    """Causal, and within `window` keys (query i sees key j iff 0 <= i - j < window) where window > 0."""
    import cudnn

    band = {"diagonal_band_left_bound": window} if window else {}
    return {"diagonal_alignment": cudnn.diagonal_alignment.TOP_LEFT, "diagonal_band_right_bound": 0, **band}


def _layout(tensor: torch.Tensor) -> tuple[Any, ...]:
    return tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype


@functools.cache
def _plan(backward: bool, layouts: tuple[tuple[Any, ...], ...], scale: float, window: int, device: int) -> Any:
    """A built cuDNN graph for these operands' shapes, strides and dtype: (graph, its tensors in the order of the
    operands, workspace bytes). Forward operands: q, k, v, o, stats; backward: q, k, v, o, dO, stats, dq, dk, dv."""
    import cudnn

    io_type = cudnn.data_type.BFLOAT16 if layouts[0][2] == torch.bfloat16 else cudnn.data_type.HALF
    graph = cudnn.pygraph(
        io_data_type=io_type,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=_handle(device),
    )

    def kind(dtype: torch.dtype) -> Any:  # the statistics are float32, the rest the inputs' type
        return cudnn.data_type.FLOAT if dtype == torch.float32 else io_type

    def operand(layout: tuple[Any, ...]) -> Any:
        shape, stride, dtype = layout
        return graph.tensor(dim=list(shape), stride=list(stride), data_type=kind(dtype))

    def output(tensor: Any, layout: tuple[Any, ...]) -> Any:
        shape, stride, dtype = layout
        return tensor.set_output(True).set_dim(list(shape)).set_stride(list(stride)).set_data_type(kind(dtype))

    if backward:
        q, k, v, o, grad, stats = (operand(layout) for layout in layouts[:6])
        results = graph.sdpa_backward(q=q, k=k, v=v, o=o, dO=grad, stats=stats, attn_scale=scale, **_masks(window))
        tensors = [q, k, v, o, grad, stats] + [output(t, lay) for t, lay in zip(results, layouts[6:], strict=True)]
    else:
        q, k, v = (operand(layout) for layout in layouts[:3])
        o, stats = graph.sdpa(q=q, k=k, v=v, attn_scale=scale, generate_stats=True, **_masks(window))
        tensors = [q, k, v, output(o, layouts[3]), output(stats, layouts[4])]
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return graph, tensors, graph.get_workspace_size()


def _execute(backward: bool, operands: list[torch.Tensor], scale: float, window: int) -> None:
    import cudnn

    device = operands[0].device.index or 0
    layouts = tuple(_layout(t) for t in operands)
    graph, tensors, workspace_bytes = _plan(backward, layouts, scale, window, device)
    handle = _handle(device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(operands[0].device).cuda_stream)
    workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=operands[0].device)
    graph.execute(dict(zip(tensors, operands, strict=True)), workspace, handle=handle)


def _outputs(q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, heads, length, _ = q.shape
    output = q.new_empty((rows, length, heads, v.shape[-1]))  # transformers' layout: [rows x T x heads x D]
    return output, q.new_empty((rows, heads, length, 1), dtype=torch.float32)


@torch.library.custom_op("harness::cudnn_attention", mutates_args=())
def cudnn_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (and, where window > 0, sliding-window) attention of q [rows x heads x T x D] over k, v [rows x
    kv_heads x T x D]: the output as [rows x T x heads x D], and the softmax statistics the backward reads."""
    output, stats = _outputs(q, v)
    _execute(False, [q, k, v, output.transpose(1, 2), stats], scale, window)
    return output, stats


@cudnn_attention.register_fake
def _attention_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _outputs(q, v)


@torch.library.custom_op("harness::cudnn_attention_backward", mutates_args=())
def cudnn_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    output: torch.Tensor,
    stats: torch.Tensor,
    grad: torch.Tensor,
    scale: float,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of q, k and v from the output's gradient (both [rows x T x heads x D])."""
    grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    operands = [q, k, v, output.transpose(1, 2), grad.contiguous().transpose(1, 2), stats, *grads]
    _execute(True, operands, scale, window)
    return grads


@cudnn_attention_backward.register_fake
def _backward_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any) -> tuple[torch.Tensor, ...]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k, v, ctx.scale, ctx.window = inputs
    ctx.save_for_backward(q, k, v, *output)


def _backward(ctx: Any, grad: torch.Tensor, _stats_grad: Any) -> tuple[Any, ...]:
    q, k, v, output, stats = ctx.saved_tensors
    grads = cudnn_attention_backward(q, k, v, output, stats, grad, ctx.scale, ctx.window)
    return *grads, None, None


cudnn_attention.register_autograd(_backward, setup_context=_setup)


def attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: the cuDNN kernels for a causal layer without a mask tensor, sdpa for
    the rest (a mask tensor: packed or padded rows; dropout; queries against a longer cache). In training a mask
    of None means rows of one example each, padded at the end: causal attention alone keeps the padding out of
    every real position."""
    if softcap:
        raise ValueError("cudnn attention cannot soft-cap attention logits: use flex_attention for this model")
    fits = attention_mask is None and not dropout and query.is_cuda and query.dtype in (torch.bfloat16, torch.half)
    if not fits or query.shape[2] != key.shape[2] or not getattr(module, "is_causal", True):  # decoding: sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    length = query.shape[2]
    window = sliding_window if sliding_window and sliding_window < length else 0
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    output, _ = cudnn_attention(query, key, value, float(scale), int(window))
    return output, None


@functools.cache
def register() -> str:
    """Make `cudnn` an attention implementation transformers models can be set to (masks built as for sdpa)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
