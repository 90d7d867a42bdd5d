"""One decoder layer's attention, forward and forward + backward, at the training bench's shape (8 x 1024 tokens,
bf16, the real configs' heads): flex attention under its default kernel options and under others, against
sdpa (cuDNN on an H100) the way the trainer calls it. Random inputs; the masks are the trainer's own
(adapters.packing), one example per row.

    python bench/attention_speed.py --model gemma-3-270m --variants sdpa,default,b64x64x64x64s1w8

Variants: `sdpa`; `cudnn` (harness.kernels.cudnn_attention: the window in cuDNN's kernels, no mask tensor; a soft-cap in
`-c<N>` query slices, harness.kernels.cudnn_attention.CAPPED_CHUNKS without); `default`
(flex, torch's options for the head size); `tuned` (harness.kernels.attention's options for this device and head size,
what the trainer passes for flex); or flex with `f<BLOCK_M>x<BLOCK_N>s<stages>w
<warps>` (forward kernel) and/or `b<BLOCK_M1>x<BLOCK_N1>x<BLOCK_N2>x<BLOCK_M2>s<stages>w<warps>` (backward),
and `tma` (Hopper's tensor-memory loads), joined by `+`. Blocks must divide flex's 128-token mask blocks.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch
from common import CONFIGS, emit, environment

VARIANTS = "sdpa,cudnn,default,tuned,b64x64x64x64s2w8,f128x64s2w8"


def kernel_options(variant: str, config: dict[str, Any]) -> dict[str, Any]:
    from types import SimpleNamespace

    from harness.kernels.attention import flex_kernel_options

    options: dict[str, Any] = {}
    for part in variant.split("+"):
        if part == "default":
            continue
        if part == "tuned":
            options |= flex_kernel_options(SimpleNamespace(**config), torch.device("cuda")) or {}
            continue
        if part == "tma":
            options["USE_TMA"] = True
            continue
        if found := re.fullmatch(r"f(\d+)x(\d+)s(\d+)w(\d+)", part):
            m, n, stages, warps = map(int, found.groups())
            options |= {"fwd_BLOCK_M": m, "fwd_BLOCK_N": n, "fwd_num_stages": stages, "fwd_num_warps": warps}
        elif found := re.fullmatch(r"b(\d+)x(\d+)x(\d+)x(\d+)s(\d+)w(\d+)", part):
            m1, n1, n2, m2, stages, warps = map(int, found.groups())
            options |= {"bwd_BLOCK_M1": m1, "bwd_BLOCK_N1": n1, "bwd_BLOCK_N2": n2, "bwd_BLOCK_M2": m2}
            options |= {"bwd_num_stages": stages, "bwd_num_warps": warps}
        else:
            raise SystemExit(f"--variants: cannot read {part!r} (see the module docstring)")
    return options


def layer_attention(config: dict[str, Any], kind: str, variant: str, rows: int, length: int) -> Any:
    """fn(q, k, v) -> output, as the trainer's compiled layer runs it for this layer kind."""
    from torch.nn.attention.flex_attention import flex_attention

    from adapters.packing import block_causal_mask, flex_block_mask

    window = config["sliding_window"] if kind == "sliding" and config["sliding_window"] < length else None
    segments = torch.ones(rows, length, dtype=torch.long, device="cuda")
    scale = config["query_pre_attn_scalar"] ** -0.5
    softcap = config.get("attn_logit_softcapping")
    if found := re.fullmatch(r"cudnn(?:-c(\d+))?", variant):
        from harness.kernels.cudnn_attention import CAPPED_CHUNKS, cudnn_attention

        chunks = int(found.group(1) or CAPPED_CHUNKS)

        def cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return cudnn_attention(q, k, v, scale, window or 0, float(softcap or 0), chunks)[0].transpose(1, 2)

        return cudnn
    if variant == "sdpa":
        mask = block_causal_mask(segments, torch.bfloat16, window) if window else None
        groups = config["num_attention_heads"] // config["num_key_value_heads"]

        def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if mask is not None:  # transformers repeats the key/value heads when it passes a mask
                k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=mask is None
            )

        return torch.compile(sdpa, dynamic=False)
    block_mask = flex_block_mask(segments, window)
    options = kernel_options(variant, config)

    def capped(score: Any, *_: Any) -> Any:
        return softcap * torch.tanh(score / softcap)

    def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        return flex_attention(
            q, k, v, score_mod=capped if softcap else None, block_mask=block_mask, scale=scale,
            enable_gqa=True, kernel_options=options or None,
        )  # fmt: skip

    return torch.compile(flex, dynamic=False)


def timed_ms(fn: Any, repeats: int) -> float:
    """The device time of one call, from the profiler's kernel records: one layer's kernels take tens of
    microseconds, less than launching them through the compiled function costs the host (the trainer replays them
    from a CUDA graph, so the device time is what counts there)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    return sum(event.self_device_time_total for event in profiler.key_averages()) / 1000 / repeats


def measure(attend: Any, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor, repeats: int) -> dict[str, float]:
    forward = timed_ms(lambda: attend(*inputs), repeats)  # as in training: the forward that keeps what backward needs
    both = timed_ms(lambda: torch.autograd.backward(attend(*inputs), grad), repeats)
    return {"forward_ms": forward, "forward_backward_ms": both, "backward_ms": both - forward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", choices=["gemma-3-270m", "gemma-2-2b-shape"])
    parser.add_argument("--variants", default=VARIANTS)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    args = parser.parse_args()
    emit(environment(), args.out)
    config = json.loads((CONFIGS / f"{args.model}.json").read_text())
    heads, groups, dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    kinds = ["sliding", "full"] if config["sliding_window"] < args.seq else ["full"]
    generator = torch.Generator(device="cuda").manual_seed(0)

    def tensor(count: int) -> torch.Tensor:
        shape = (args.rows, count, args.seq, dim)
        return torch.randn(shape, generator=generator, device="cuda", dtype=torch.bfloat16).requires_grad_()

    q, k, v = tensor(heads), tensor(groups), tensor(groups)
    grad = torch.randn_like(q)
    for kind in kinds:
        for variant in args.variants.split(","):
            torch._dynamo.reset()
            row: dict[str, Any] = {"what": "attention", "model": args.model, "layer": kind, "variant": variant}
            try:
                attend = layer_attention(config, kind, variant, args.rows, args.seq)
                row |= measure(attend, (q, k, v), grad, args.repeats)
            except Exception as error:  # a variant the kernel cannot take: report it, go on
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            emit(row, args.out)


if __name__ == "__main__":
    main()
