"""Causal and sliding-window attention on cuDNN's fused flash kernels, through the cuDNN frontend (`attention:
cudnn`, what `auto` picks for training on a GPU where the frontend is installed: the `cudnn` extra).

torch's sdpa reaches the same kernels for plain causal attention (`is_causal`), but it has no sliding window: a
windowed layer (15 of Gemma 3 270M's 18) hands it a [rows x 1 x T x T] mask tensor, and with a mask cuDNN computes
every query-key block and reads the mask beside. cuDNN itself takes the window as a band around the diagonal and
skips the blocks outside it. Here the frontend's graphs (built once per shape and layout, then replayed; a CUDA
graph can capture them) run the forward and the backward as two operators opaque to the compiler.

Soft-capped logits (Gemma 2: cap * tanh(logit / cap)) go through cuDNN's score modifier, which this cuDNN (9.19)
takes only without its causal and band masks: the modifier masks too, and the kernels then compute every block of
a call. The queries run in slices (CAPPED_CHUNKS), each against the keys up to its last query, which leaves out
part of the blocks above the diagonal (with 2 slices, 3/4 of the square computed against causal's 1/2).

Where the kernels do not fit (a mask tensor: packed or padded rows; dropout; a CPU; queries against a longer
cache) the layer runs transformers' sdpa instead, or the model's own eager attention where it soft-caps its logits.
"""

from __future__ import annotations

import functools
import itertools
import sys
from typing import Any

import torch

NAME = "cudnn"
CAPPED_CHUNKS = 2  # query slices of soft-capped attention (_spans), measured in BENCHMARKS.md


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


class _Cap:
    """Soft-capped logits as cuDNN's score modifier and its backward: cap * tanh(score / cap), then the causal
    (and windowed) mask, since cuDNN takes a score modifier only without masks of its own. Query row r, `shift`
    rows past the first key of the call, sees key column c iff 0 <= r + shift - c (< window where window > 0).
    The scalars are pass-by-value tensors: `values` maps them to what execution hands cuDNN."""

    def __init__(self, graph: Any, cap: float, shift: int, window: int) -> None:
        self.values: dict[Any, torch.Tensor] = {}
        self.cap, self.floor = self._scalar(graph, cap), self._scalar(graph, -(2.0**30))
        self.shift, self.zero = self._scalar(graph, shift), self._scalar(graph, 0)
        self.window = self._scalar(graph, window) if window else None

    def _scalar(self, graph: Any, value: float) -> Any:
        cpu = torch.full((1, 1, 1, 1), value, dtype=torch.int32 if isinstance(value, int) else torch.float32)
        tensor = graph.tensor(dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], is_pass_by_value=True, data_type=cpu.dtype)
        self.values[tensor] = cpu
        return tensor

    def forward(self, graph: Any, score: Any) -> Any:
        import cudnn

        integer, boolean = cudnn.data_type.INT32, cudnn.data_type.BOOLEAN

        def typed(tensor: Any, kind: Any) -> Any:
            tensor.set_data_type(kind)
            return tensor

        self.scaled = graph.div(a=score, b=self.cap)
        capped = graph.mul(a=graph.tanh(input=self.scaled), b=self.cap)
        row, column = (typed(graph.gen_index(input=score, axis=axis), integer) for axis in (2, 3))
        distance = typed(graph.add(a=row, b=self.shift, compute_data_type=integer), integer)
        distance = typed(graph.sub(a=distance, b=column, compute_data_type=integer), integer)
        seen = typed(graph.cmp_ge(input=distance, comparison=self.zero, compute_data_type=boolean), boolean)
        capped = graph.binary_select(input0=capped, input1=self.floor, mask=seen)
        if self.window is None:
            return capped
        near = typed(graph.cmp_lt(input=distance, comparison=self.window, compute_data_type=boolean), boolean)
        return graph.binary_select(input0=capped, input1=self.floor, mask=near)

    def backward(self, graph: Any, grad: Any) -> Any:
        """The masked scores' probabilities are 0, and so their gradients already: only the tanh's derivative."""
        return graph.tanh_backward(loss=grad, input=self.scaled)


@functools.cache
def _plan(
    backward: bool, layouts: tuple[tuple[Any, ...], ...], scale: float, window: int, cap: float, shift: int, device: int
) -> Any:
    """A built cuDNN graph for these operands' shapes, strides and dtype: (graph, its tensors in the order of the
    operands, pass-by-value scalars, workspace bytes). Forward operands: q, k, v, o, stats; backward: q, k, v, o,
    dO, stats, dq, dk, dv. With `cap` > 0 the logits are soft-capped and masked by a score modifier (_Cap)."""
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

    capping = _Cap(graph, cap, shift, window) if cap else None
    masks: dict[str, Any] = {"score_mod": capping.forward} if capping else _masks(window)
    if backward:
        q, k, v, o, grad, stats = (operand(layout) for layout in layouts[:6])
        if capping:
            masks["score_mod_bprop"] = capping.backward
        results = graph.sdpa_backward(q=q, k=k, v=v, o=o, dO=grad, stats=stats, attn_scale=scale, **masks)
        tensors = [q, k, v, o, grad, stats] + [output(t, lay) for t, lay in zip(results, layouts[6:], strict=True)]
    else:
        q, k, v = (operand(layout) for layout in layouts[:3])
        o, stats = graph.sdpa(q=q, k=k, v=v, attn_scale=scale, generate_stats=True, **masks)
        tensors = [q, k, v, output(o, layouts[3]), output(stats, layouts[4])]
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return graph, tensors, capping.values if capping else {}, graph.get_workspace_size()


def _execute(
    backward: bool, operands: list[torch.Tensor], scale: float, window: int, cap: float = 0.0, shift: int = 0
) -> None:
    import cudnn

    device = operands[0].device.index or 0
    layouts = tuple(_layout(t) for t in operands)
    graph, tensors, scalars, workspace_bytes = _plan(backward, layouts, scale, window, cap, shift, device)
    handle = _handle(device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(operands[0].device).cuda_stream)
    workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=operands[0].device)
    graph.execute(dict(zip(tensors, operands, strict=True)) | scalars, workspace, handle=handle)


def _spans(length: int, window: int, chunks: int) -> list[tuple[int, int, int]]:
    """Soft-capped attention in `chunks` slices of the queries, each against the keys it can see: (first query,
    end, first key). The score modifier's mask makes cuDNN compute every query-key block of a call; c slices
    compute (c + 1) / 2c of the square, but each call costs its own launches (BENCHMARKS.md: 2 measured best)."""
    edges = [length * part // chunks for part in range(chunks + 1)]
    return [(a, b, max(0, a - window + 1) if window else 0) for a, b in itertools.pairwise(edges) if b > a]


def _outputs(q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, heads, length, _ = q.shape
    output = q.new_empty((rows, length, heads, v.shape[-1]))  # transformers' layout: [rows x T x heads x D]
    return output, q.new_empty((rows, heads, length, 1), dtype=torch.float32)


@torch.library.custom_op("harness::cudnn_attention", mutates_args=())
def cudnn_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int, cap: float = 0.0, chunks: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (and, where window > 0, sliding-window) attention of q [rows x heads x T x D] over k, v [rows x
    kv_heads x T x D], its logits soft-capped at `cap` where cap > 0 (in `chunks` slices of the queries): the
    output as [rows x T x heads x D], and the softmax statistics the backward reads."""
    output, stats = _outputs(q, v)
    if not cap:
        _execute(False, [q, k, v, output.transpose(1, 2), stats], scale, window)
        return output, stats
    for first, end, key in _spans(q.shape[2], window, chunks):
        rows = slice(first, end)
        operands = [q[:, :, rows], k[:, :, key:end], v[:, :, key:end], output.transpose(1, 2)[:, :, rows]]
        _execute(False, [*operands, stats[:, :, rows]], scale, window, cap, first - key)
    return output, stats


@cudnn_attention.register_fake
def _attention_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int, cap: float = 0.0, chunks: int = 1
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
    cap: float = 0.0,
    chunks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of q, k and v from the output's gradient (both [rows x T x heads x D]). Query slices that see
    the same keys add their key and value gradients; the last slice, which sees every key, writes them first."""
    grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    output, grad = output.transpose(1, 2), grad.contiguous().transpose(1, 2)
    if not cap:
        _execute(True, [q, k, v, output, grad, stats, *grads], scale, window)
        return grads
    spans = _spans(q.shape[2], window, chunks)[::-1]
    if spans[0][2]:  # the last slice does not see the first keys: the others add into zeros
        grads[1].zero_(), grads[2].zero_()
    for number, (first, end, key) in enumerate(spans):
        rows, keys = slice(first, end), slice(key, end)
        if number == 0 and not key:
            dk, dv = grads[1], grads[2]
        else:
            dk, dv = torch.empty_like(k[:, :, keys]), torch.empty_like(v[:, :, keys])
        operands = [q[:, :, rows], k[:, :, keys], v[:, :, keys], output[:, :, rows], grad[:, :, rows]]
        _execute(True, [*operands, stats[:, :, rows], grads[0][:, :, rows], dk, dv], scale, window, cap, first - key)
        if dk is not grads[1]:
            grads[1][:, :, keys] += dk
            grads[2][:, :, keys] += dv
    return grads


@cudnn_attention_backward.register_fake
def _backward_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any) -> tuple[torch.Tensor, ...]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k, v, *ctx.options = inputs
    ctx.save_for_backward(q, k, v, *output)


def _backward(ctx: Any, grad: torch.Tensor, _stats_grad: Any) -> tuple[Any, ...]:
    q, k, v, output, stats = ctx.saved_tensors
    grads = cudnn_attention_backward(q, k, v, output, stats, grad, *ctx.options)
    return *grads, *[None] * len(ctx.options)


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
    the rest (a mask tensor: packed or padded rows; dropout; queries against a longer cache), or the model's own
    eager attention where it soft-caps its logits (sdpa cannot). In training a mask of None means rows of one
    example each, padded at the end: causal attention alone keeps the padding out of every real position."""
    fits = attention_mask is None and not dropout and query.is_cuda and query.dtype in (torch.bfloat16, torch.half)
    if not fits or query.shape[2] != key.shape[2] or not getattr(module, "is_causal", True):  # decoding: sdpa
        if softcap:
            eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if eager is None:
                raise ValueError(f"cudnn attention: {type(module).__name__} soft-caps its logits and has no eager "
                                 "attention for rows the kernels cannot take: use flex_attention")  # fmt: skip
            return eager(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                         sliding_window=sliding_window, softcap=softcap, **kwargs)  # fmt: skip
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    length = query.shape[2]
    window = sliding_window if sliding_window and sliding_window < length else 0
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    cap, chunks = (float(softcap), CAPPED_CHUNKS) if softcap else (0.0, 1)
    output, _ = cudnn_attention(query, key, value, float(scale), int(window), cap, chunks)
    return output, None


@functools.cache
def register() -> str:
    """Make `cudnn` an attention implementation transformers models can be set to (masks built as for sdpa)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
