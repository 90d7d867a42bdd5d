"""harness/kernels/nf4.py's kernel alone against bitsandbytes' dequantization, per weight of a model shape: µs per
weight and the memory speed that makes (4-bit codes read, bf16 written), bitsandbytes with and without the copy
that puts the LoRA matrix beside (or under) the weight as `lora_linear` needs it. `--sweep` times the kernel's
tile sizes and warps too. A measurement for design questions, not a contender of train_speed.py.

    python bench/nf4_speed.py --shape gemma-2-2b [--sweep]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any

import torch
from common import captured, emit, environment
from lora_groups import SHAPES

RANK = 16


def weights(shape: tuple[int, int, int, int]) -> dict[str, tuple[int, int]]:
    hidden, q, kv, inter = shape
    return {"q": (q, hidden), "k": (kv, hidden), "o": (hidden, q), "up": (inter, hidden), "down": (hidden, inter)}


def microseconds(fn: Callable[[], Any], repeats: int = 50) -> float:
    """Median µs per call of `fn` replayed from a CUDA graph (as the trainer runs it: no launch cost)."""
    graph = captured(fn, calls=10)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / 10)
    return sorted(times)[len(times) // 2]


def contenders(out: int, width: int) -> dict[str, Callable[[], Any]]:
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    from adapters.lora_addmm import laid_out, margins
    from harness.kernels import nf4

    weight = torch.randn(out, width, device="cuda", dtype=torch.bfloat16) / width**0.5
    packed, state = quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    a = torch.randn(RANK, width, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(out, RANK, device="cuda", dtype=torch.bfloat16)
    right, below = margins(a, b)
    return {
        "bitsandbytes": lambda: dequantize_4bit(packed, state),
        "bitsandbytes+copy": lambda: laid_out(dequantize_4bit(packed, state), a, b),
        "kernel": lambda: nf4.kernel_dequantize([packed], [state], torch.bfloat16, right, below),
    }


def main() -> None:
    from harness.kernels import nf4

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="gemma-2-2b", choices=sorted(SHAPES))
    parser.add_argument("--sweep", action="store_true", help="the kernel's tile sizes and warps too")
    args = parser.parse_args()
    emit(environment(), None)
    default = (nf4.ROWS, nf4.PAIRS, nf4.WARPS)
    tiles = list(itertools.product((4, 8, 16, 32), (64, 128, 256), (4, 8))) if args.sweep else [default]
    for name, (out, width) in weights(SHAPES[args.shape]).items():
        row = {"what": "nf4-dequantize", "shape": args.shape, "weight": name, "out": out, "in": width}
        terabytes = out * width * 2.5 / 1e12  # half a byte read, two written per value
        for contender, fn in contenders(out, width).items():
            for tile in tiles if contender == "kernel" else [None]:
                if tile is not None:
                    nf4.ROWS, nf4.PAIRS, nf4.WARPS = tile
                us = microseconds(fn)
                named = contender if tile is None else f"kernel-{tile[0]}x{tile[1]}-w{tile[2]}"
                emit({**row, "contender": named, "us": round(us, 2), "TB_per_s": round(terabytes / us * 1e6, 2)}, None)
            nf4.ROWS, nf4.PAIRS, nf4.WARPS = default


if __name__ == "__main__":
    main()
