"""One decoder layer's LoRA projections on NF4 weights, forward twice (gradient checkpointing's recompute) and
backward once, under a CUDA graph: each projection its own `lora_linear` (today's operator) against the
projections that read one input (q, k, v; gate, up) as one widened matmul `[x | inner] @ [W | B]^T` with the
LoRA B matrices block-diagonal. A measurement for a design question, not a contender of train_speed.py.

    python bench/lora_groups.py --shape gemma-2-2b --tokens 8192
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from common import emit, environment, profile_table, timed

SHAPES = {  # hidden, q, kv, intermediate
    "gemma-2-2b": (2304, 2048, 1024, 9216),
    "gemma-3-270m": (640, 1024, 256, 2048),
}


def nf4(out: int, width: int) -> dict[str, Any]:
    from bitsandbytes.functional import quantize_4bit

    weight = torch.randn(out, width, device="cuda", dtype=torch.bfloat16) / width**0.5
    packed, state = quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    return {
        "packed": packed,
        "state": state,
        "a": torch.randn(16, width, device="cuda") / width**0.5,
        "b": torch.randn(out, 16, device="cuda") * 0.02,
    }


def dense(p: dict[str, Any]) -> torch.Tensor:
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(p["packed"], p["state"]).to(torch.bfloat16)


def separate(x: torch.Tensor, group: list[dict[str, Any]], grads: list[torch.Tensor], kernel: bool = True) -> None:
    """Each projection its own `lora_linear`, its weight laid out by adapters/nf4.py's kernel (or bitsandbytes'
    dequantization and a copy: `kernel` false)."""
    from adapters import nf4
    from adapters.lora_addmm import laid_out, layout, lora_linear, lora_linear_backward

    for p, grad in zip(group, grads, strict=True):
        a, b = (p["a"] * 2.0).to(torch.bfloat16), p["b"].to(torch.bfloat16)
        kind = layout(b.shape[0], x.shape[1], 16)
        for _ in range(2):  # the forward and the recompute
            if kernel:
                right, below = (b if kind == "input" else None), (a if kind == "gradient" else None)
                weight = nf4.dequantize(p["packed"], p["state"], torch.bfloat16, right, below)
            else:
                weight = laid_out(dense(p), a, b)
            _, inner = lora_linear(x, weight, a, b, None)
        lora_linear_backward(grad, x, weight, a, b, None, inner)


def separate_bnb(x: torch.Tensor, group: list[dict[str, Any]], grads: list[torch.Tensor]) -> None:
    separate(x, group, grads, kernel=False)


def grouped(x: torch.Tensor, group: list[dict[str, Any]], grads: list[torch.Tensor]) -> None:
    width = x.shape[1]
    grad = torch.cat(grads, dim=1)  # in training the consumers would write one [tokens x sum(out)] gradient
    outs = [p["b"].shape[0] for p in group]
    for _ in range(2):  # the forward and the recompute
        a = (torch.cat([p["a"] for p in group]) * 2.0).to(torch.bfloat16)
        b = torch.block_diag(*[p["b"] for p in group]).to(torch.bfloat16)
        weight = torch.cat([torch.cat([dense(p) for p in group]), b], dim=1)
        inner = x @ a.t()
        torch.cat([x, inner], dim=1) @ weight.t()
    both = grad @ weight
    grad_x, grad_inner = both[:, :width], both[:, width:].contiguous()
    grad_inner.t() @ x
    start = 0
    for index, out in enumerate(outs):
        grad[:, start : start + out].t() @ inner[:, 16 * index : 16 * (index + 1)]
        start += out
    grad_x.addmm_(grad_inner, a)


def grouped_addmm(x: torch.Tensor, group: list[dict[str, Any]], grads: list[torch.Tensor]) -> None:
    """Not widened: `x @ W^T` with the weights stacked, the block-diagonal LoRA product added into the output."""
    grad = torch.cat(grads, dim=1)
    for _ in range(2):  # the forward and the recompute
        a = (torch.cat([p["a"] for p in group]) * 2.0).to(torch.bfloat16)
        b = torch.block_diag(*[p["b"] for p in group]).to(torch.bfloat16)
        weight = torch.cat([dense(p) for p in group])
        inner = x @ a.t()
        (x @ weight.t()).addmm_(inner, b.t())
    grad_x = grad @ weight
    grad_inner = grad @ b
    grad_inner.t() @ x
    grad.t() @ inner
    grad_x.addmm_(grad_inner, a)


VARIANTS = {"separate-bnb": separate_bnb, "separate": separate, "grouped": grouped, "grouped-addmm": grouped_addmm}


def groups(shape: tuple[int, int, int, int]) -> dict[str, tuple[int, list[int]]]:
    hidden, q, kv, inter = shape
    return {
        "qkv": (hidden, [q, kv, kv]),
        "o": (q, [hidden]),
        "gate-up": (hidden, [inter, inter]),
        "down": (inter, [hidden]),
    }


def graphed(variant: Any, width: int, outs: list[int], tokens: int) -> Any:
    x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
    params = [nf4(out, width) for out in outs]
    grads = [torch.randn(tokens, out, device="cuda", dtype=torch.bfloat16) for out in outs]
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        variant(x, params, grads)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            variant(x, params, grads)
    torch.cuda.current_stream().wait_stream(stream)
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="gemma-2-2b", choices=sorted(SHAPES))
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--profile", default="", help="comma list of group:variant to torch-profile")
    args = parser.parse_args()
    emit(environment(), None)
    device = torch.device("cuda")
    for group, (width, outs) in groups(SHAPES[args.shape]).items():
        for name, variant in VARIANTS.items():
            if len(outs) == 1 and not name.startswith("separate"):
                continue
            replay = graphed(variant, width, outs, args.tokens)
            seconds = timed(replay, device, args.repeats)
            if f"{group}:{name}" in args.profile.split(","):
                profile_table(replay, device, None, f"{group}:{name}", rows=25)
            row = {"what": "lora-groups", "shape": args.shape, "tokens": args.tokens, "group": group}
            emit({**row, "variant": name, "ms": round(seconds * 1e3, 3)}, None)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
