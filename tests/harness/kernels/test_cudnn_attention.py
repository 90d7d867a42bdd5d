"""cuDNN attention with sliding windows and soft-capped logits (harness.kernels.cudnn_attention) against float32
attention given the same mask as a tensor; where it hands over to other attention; and the masks the loss hands it.

The kernels need a GPU and the cuDNN frontend (the `cudnn` extra): those tests are marked gpu and skip here."""

from __future__ import annotations

import pytest
import torch

from adapters.packing import attention_masks
from harness.kernels import cudnn_attention

needs_cudnn = pytest.mark.skipif(not cudnn_attention.available(), reason="needs a CUDA device and the cuDNN frontend")


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int, cap: float = 0.0
) -> torch.Tensor:
    """Attention in float32 with the mask as a tensor: query i sees key j iff j <= i and i - j < window (window
    > 0); the logits soft-capped at `cap` (cap * tanh(logit / cap)) where cap > 0, as Gemma 2's eager attention."""
    length = q.shape[2]
    query, key = torch.arange(length, device=q.device)[:, None], torch.arange(length, device=q.device)[None, :]
    allowed = (key <= query) & ((query - key < window) if window else True)
    groups = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(groups, 1), v.float().repeat_interleave(groups, 1)
    logits = q.float() @ k.transpose(2, 3) * scale
    if cap:
        logits = cap * torch.tanh(logits / cap)
    output = logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return output.transpose(1, 2)


CASES = [  # heads, kv_heads, dim, length, window, cap, chunks
    (4, 1, 256, 200, 48, 0.0, 1),
    (4, 2, 64, 300, 0, 0.0, 1),
    (4, 2, 256, 300, 0, 5.0, 4),
    (2, 1, 64, 200, 48, 5.0, 3),
]


@pytest.mark.gpu
@needs_cudnn
@pytest.mark.parametrize(("heads", "kv_heads", "dim", "length", "window", "cap", "chunks"), CASES)
@pytest.mark.parametrize("layout", ["contiguous", "projected"])
def test_output_and_gradients_match_masked_attention(
    heads: int, kv_heads: int, dim: int, length: int, window: int, cap: float, chunks: int, layout: str
) -> None:
    """Grouped heads, lengths that are no multiple of the kernels' tiles, a window shorter than the rows and none,
    soft-capped logits in query slices (a cap of 5 bends most logits); q, k, v contiguous or as transformers
    passes them (a [rows x T x heads x D] projection, transposed)."""
    generator = torch.Generator(device="cuda").manual_seed(0)

    def tensor(count: int) -> torch.Tensor:
        shape = (2, count, length, dim) if layout == "contiguous" else (2, length, count, dim)
        values = 2 * torch.randn(shape, generator=generator, device="cuda", dtype=torch.bfloat16)
        return (values if layout == "contiguous" else values.transpose(1, 2)).requires_grad_()

    q, k, v = tensor(heads), tensor(kv_heads), tensor(kv_heads)
    grad = torch.randn(2, length, heads, dim, generator=generator, device="cuda", dtype=torch.bfloat16)
    scale = dim**-0.5
    output, stats = cudnn_attention.cudnn_attention(q, k, v, scale, window, cap, chunks)
    assert output.shape == (2, length, heads, dim) and stats.dtype == torch.float32
    got = (output, *torch.autograd.grad(output, (q, k, v), grad))
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    expected_output = reference(*leaves, scale, window, cap)
    expected = (expected_output, *torch.autograd.grad(expected_output, leaves, grad.float()))
    errors = {}
    for name, value, truth in zip(["output", "dq", "dk", "dv"], got, expected, strict=True):
        errors[name] = float((value.float() - truth).norm() / truth.norm())
        assert errors[name] < 2e-2, f"{name}: {errors[name]:.2e} from float32 attention"
    if window:  # closer to this window than to one key less: bf16's rounding is not what the tolerance hides
        narrower = reference(*leaves, scale, window - 1, cap)
        assert errors["output"] < float((output.float() - narrower).norm() / narrower.norm()) / 2
    if cap:  # and closer to the cap than to none
        uncapped = reference(*leaves, scale, window)
        assert errors["output"] < float((output.float() - uncapped).norm() / uncapped.norm()) / 2


@pytest.mark.gpu
@needs_cudnn
@pytest.mark.parametrize(("cap", "chunks"), [(0.0, 1), (3.0, 2)])
def test_replays_under_a_cuda_graph_and_compiles(cap: float, chunks: int) -> None:
    """Captured in a CUDA graph (the trainer's micro-steps) and called from a compiled function (its layers),
    forward and backward; plain and soft-capped in query slices."""
    generator = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(2, 4, 128, 64, generator=generator, device="cuda", dtype=torch.bfloat16)
    k, v = q[:, :2].clone(), q[:, 2:].clone()

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return cudnn_attention.cudnn_attention(q, k, v, 0.125, 32, cap, chunks)[0] * 2

    attend = torch.compile(attention)
    expected = attend(q, k, v)
    assert float((expected.float() / 2 - reference(q, k, v, 0.125, 32, cap)).abs().max()) < 2e-2
    static = [t.clone() for t in (q, k, v)]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = attend(*static)
    static[0].copy_(q.flip(2))
    graph.replay()
    assert torch.equal(captured, attend(q.flip(2), k, v))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    compiled = torch.autograd.grad(attend(*leaves).float().square().sum(), leaves)  # the backward compiled too
    eager = torch.autograd.grad(attention(*leaves).float().square().sum(), leaves)
    for got, expected_grad in zip(compiled, eager, strict=True):
        assert float((got.float() - expected_grad.float()).norm() / expected_grad.float().norm()) < 1e-2


@pytest.mark.gpu
@needs_cudnn
def test_decoding_against_a_longer_cache_runs_sdpa() -> None:
    """A query shorter than the keys (a generation step) is no causal square: transformers' sdpa takes it."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal = True
    generator = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(1, 4, 1, 64, generator=generator, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, 9, 64, generator=generator, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    module.num_key_value_groups = 2
    got, _ = cudnn_attention.attention_forward(module, q, k, v, None, scaling=0.125)
    expected, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.125)
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("length", "window", "chunks"), [(1024, 0, 2), (300, 0, 4), (200, 48, 3), (7, 0, 4)])
def test_query_slices_cover_every_query_once_with_every_key_it_sees(length: int, window: int, chunks: int) -> None:
    """The soft-capped path's slices (CPU: plain arithmetic): every query in exactly one slice, each slice's keys
    from the first one its first query sees to its last query; with 2 slices of 1024, 3/4 of the square."""
    spans = cudnn_attention._spans(length, window, chunks)
    assert [first for first, _, _ in spans] == [0] + [end for _, end, _ in spans[:-1]] and spans[-1][1] == length
    for first, _, key in spans:
        assert key == (max(0, first - window + 1) if window else 0)
    if (length, chunks) == (1024, 2):
        assert sum((end - first) * (end - key) for first, end, key in spans) == length * length * 3 // 4


def test_fake_outputs_have_the_real_ones_layouts() -> None:
    """What the compiler plans with (the operators' fake implementations, run on any device): the output in
    transformers' [rows x T x heads x D] layout, float32 statistics, gradients laid out like their inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 5, 4, 8, dtype=torch.bfloat16).transpose(1, 2)  # as transformers passes it
        k = v = torch.empty(2, 1, 5, 8, dtype=torch.bfloat16)
        output, stats = cudnn_attention.cudnn_attention(q, k, v, 0.5, 3)
        grads = cudnn_attention.cudnn_attention_backward(q, k, v, output, stats, output, 0.5, 3)
    assert output.shape == (2, 5, 4, 8) and output.is_contiguous()
    assert stats.shape == (2, 4, 5, 1) and stats.dtype == torch.float32
    assert [g.stride() for g in grads] == [q.stride(), k.stride(), v.stride()]


def test_refused_without_a_gpu() -> None:
    from harness.backends.hf import ModelOptions, load_model
    from harness.core.errors import HarnessError

    if cudnn_attention.available():
        pytest.skip("a GPU and the cuDNN frontend are here")
    with pytest.raises(HarnessError, match="cudnn") as refused:
        load_model(ModelOptions(attention="cudnn", device="cpu")).model  # noqa: B018
    assert refused.value.field == "attention"


def test_soft_capped_logits_the_kernels_cannot_take_run_the_models_eager_attention() -> None:
    """A mask tensor (or a CPU) with soft-capped logits: sdpa would drop the cap, so Gemma 2's own eager attention
    runs (a tiny random Gemma 2 layer's attention module)."""
    from transformers import Gemma2Config
    from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, eager_attention_forward

    config = Gemma2Config(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    module = Gemma2Attention(config, layer_idx=0)
    generator = torch.Generator().manual_seed(3)
    q = 8 * torch.randn(1, 2, 5, 8, generator=generator)
    k, v = (8 * torch.randn(1, 1, 5, 8, generator=generator) for _ in range(2))
    mask = torch.zeros(1, 1, 5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    got, _ = cudnn_attention.attention_forward(module, q, k, v, mask, scaling=0.25, softcap=2.0)
    expected, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.25, softcap=2.0)
    uncapped, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert torch.equal(got, expected) and not torch.allclose(got, uncapped, atol=1e-2)


def test_rows_of_one_example_need_no_mask_and_packed_rows_keep_theirs() -> None:
    """With the window in the kernel, no layer type of unpacked rows gets a mask tensor; packed rows keep theirs
    (and the attention then runs sdpa with them)."""
    from types import SimpleNamespace

    config = SimpleNamespace(layer_types=["sliding_attention", "full_attention"], sliding_window=4)
    single = torch.tensor([[1] * 8 + [0] * 2])
    masks = attention_masks(config, single, torch.bfloat16, causal_none=True, windowed=True)
    assert masks == {"sliding_attention": None, "full_attention": None}
    assert attention_masks(config, single, torch.bfloat16, causal_none=True)["sliding_attention"] is not None
    packed = torch.tensor([[1] * 5 + [2] * 5])
    masks = attention_masks(config, packed, torch.bfloat16, causal_none=False, windowed=True)
    assert all(mask is not None for mask in masks.values())
