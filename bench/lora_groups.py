"""One decoder layer's LoRA projections on NF4 weights, forward twice (gradient checkpointing's recompute) and
backward once, under a CUDA graph, through adapters/lora_addmm.py's operator: each projection alone
(`separate`) and the projections of one input (q, k, v; gate, up) as one (`grouped`: weights stacked, LoRA B
block-diagonal), the weights dequantized by bitsandbytes and laid out by a copy, or by harness/kernels/nf4.py's kernel
(`-kernel`).
The grouped backward is handed one gradient of all outputs, as autograd hands the operator. A measurement for
design questions, not a contender of train_speed.py.

    python bench/lora_groups.py --shape gemma-2-2b --tokens 8192 [--profile gate-up:separate]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from common import captured, emit, environment, profile_table, timed

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


def run(x: torch.Tensor, group: list[dict[str, Any]], grad: torch.Tensor, kernel: bool) -> None:
    """The projections of `group` as one `lora_linear` (one alone: as the trainer runs it), the weight laid out by
    harness/kernels/nf4.py's kernel (or by bitsandbytes' dequantization and a copy: `kernel` false)."""
    from adapters.lora_addmm import _stacked, laid_out, lora_linear, lora_linear_backward, margins
    from harness.kernels import nf4

    a = _stacked([(p["a"] * 2.0).to(torch.bfloat16) for p in group])
    b = _stacked([p["b"].to(torch.bfloat16) for p in group], diagonal=True)
    nf4.KERNEL = kernel
    for _ in range(2):  # the forward and the recompute
        right, below = margins(a, b)
        weight = nf4.dequantize([p["packed"] for p in group], [p["state"] for p in group], torch.bfloat16, right,
                                below)  # fmt: skip
        if weight is None:
            weight = laid_out(_stacked([dense(p) for p in group]), a, b)
        _, inner = lora_linear(x, weight, a, b, None)
    lora_linear_backward(grad, x, weight, a, b, None, inner)


def variants(outs: list[int]) -> dict[str, Any]:
    """Each projection alone (`separate`) and those of one input as one (`grouped`); `-kernel`: through it."""

    def alone(kernel: bool) -> Any:
        def each(x: torch.Tensor, group: list[dict[str, Any]], grads: list[torch.Tensor]) -> None:
            for p, grad in zip(group, grads[: len(group)], strict=True):
                run(x, [p], grad, kernel)

        return each

    found = {"separate": alone(False), "separate-kernel": alone(True)}
    if len(outs) > 1:
        found["grouped"] = lambda x, group, grads: run(x, group, grads[-1], False)
        found["grouped-kernel"] = lambda x, group, grads: run(x, group, grads[-1], True)
    return found


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
    grads = [torch.randn(tokens, out, device="cuda", dtype=torch.bfloat16) for out in [*outs, sum(outs)]]
    return captured(lambda: variant(x, params, grads)).replay


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
        for name, variant in variants(outs).items():
            replay = graphed(variant, width, outs, args.tokens)
            seconds = timed(replay, device, args.repeats)
            if f"{group}:{name}" in args.profile.split(","):
                profile_table(replay, device, None, f"{group}:{name}", rows=25)
            row = {"what": "lora-groups", "shape": args.shape, "tokens": args.tokens, "group": group}
            emit({**row, "variant": name, "ms": round(seconds * 1e3, 3)}, None)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
