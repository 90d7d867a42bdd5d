"""The fused LM-head log-sum-exp (harness.kernels.head_kernel) against the head it replaces, on a GPU: tile settings of
the kernel, the plain cuBLAS head matmul alone (what the unfused head spends before any log-sum-exp), and the
chunked path (matmul + compiled log-sum-exp per chunk). Random bf16 inputs of the real shapes.

    python bench/head_kernel.py --configs 128x128x64w8s3v16,128x256x64w8s3v16

`--lse SLICExBLOCKwWARPS,...` times training's log-sum-exp of given logits instead, under CUDA graphs as in
training (harness.kernels.head_kernel's logits_nll_and_lse against the compiled two-stage reduction it replaces, and the
logits' gradient kernel, which reads and writes the logits once, as a yardstick of the memory's speed) on one
256-row chunk of bf16 logits; soft-capped, also the one pass that replaces both in training.
"""

from __future__ import annotations

import argparse
import re

import common  # noqa: F401  (puts this checkout on the import path)
import torch

DEFAULTS = (0, 0, 64, 8, 3, 16)  # "auto": the tiles harness.kernels.head_kernel picks by hidden size
CONFIGS = (
    "auto,128x128x64w8s3v1,128x128x64w8s3v16,128x256x64w8s3v16,256x128x64w8s3v16,128x256x64w8s4v16,128x128x64w8s4v32"
)
# hidden size, vocabulary and final soft-cap of each model's head
SHAPES = {"gemma-3-270m": (640, 262_144, None), "gemma-2-2b-shape": (2304, 256_000, 30.0)}


def timed_ms(fn: object, repeats: int = 10, graph: bool = False) -> float:
    """Milliseconds per call of `fn` after one warm-up call; `graph`: the calls captured as one CUDA graph and
    replayed, so that the launches of small kernels do not count (as in a CUDA-graphed training step)."""
    fn()  # type: ignore[operator]
    torch.cuda.synchronize()
    replay = fn
    if graph:
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            for _ in range(repeats):
                fn()  # type: ignore[operator]
        replay = captured.replay
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(1 if graph else repeats):
        replay()  # type: ignore[operator]
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def compare(model: str, dim: int, vocab: int, softcap: float | None, rows: int, configs: list[str]) -> None:
    from harness.kernels import head_kernel, headloss

    hidden = torch.randn(rows, dim, device="cuda").bfloat16()
    head = torch.nn.Linear(dim, vocab, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    head.weight.normal_(0, 0.5)  # logits of a few units, so that the soft-cap bends some of them
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    tflop = 2 * rows * dim * vocab / 1e12
    some = slice(0, 256)  # the rows checked against float64
    reference = torch.logsumexp(headloss._capped(hidden[some].double() @ head.weight.double().T, softcap), dim=-1)
    label = model + (f" cap {softcap:g}" if softcap else "")

    def report(what: str, ms: float) -> None:
        print(f"{label:>24} {what:>22}: {ms:8.2f} ms  {tflop / ms * 1e3:6.0f} TFLOP/s", flush=True)

    report("cuBLAS matmul only", timed_ms(lambda: hidden @ head.weight.T))
    headloss.FUSED_KERNEL = False
    report("chunked head NLL", timed_ms(lambda: headloss.token_nll(hidden, targets, head, softcap)))
    headloss.FUSED_KERNEL = True
    for config in configs:
        m, n, k, warps, stages, splits = map(int, re.findall(r"\d+", config)) if config != "auto" else DEFAULTS
        head_kernel.BLOCK_M, head_kernel.BLOCK_N, head_kernel.BLOCK_K = m or None, n or None, k
        head_kernel.WARPS, head_kernel.STAGES, head_kernel.MIN_SPLITS = warps, stages, splits
        try:
            lse = head_kernel.linear_logsumexp(hidden[some], head.weight, softcap)
            error = float((lse.double() - reference).abs().max())
            ms = timed_ms(lambda: head_kernel.linear_nll(hidden, head.weight, targets, softcap))
            report(f"kernel {config}", ms)
            print(f"{'':>48}  max |lse - fp64| = {error:.2e}", flush=True)
        except Exception as failure:  # a tile that does not fit in shared memory fails to launch
            print(f"{label:>24} kernel {config}: {repr(failure)[:200]}", flush=True)


def compare_lse(model: str, vocab: int, rows: int, configs: list[str], softcap: float | None) -> None:
    from harness.kernels import head_kernel, headloss

    logits = (torch.randn(rows, vocab, device="cuda") * 4).bfloat16()
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    reference = torch.logsumexp(headloss._capped(logits, softcap).double(), dim=-1)
    gigabytes = logits.numel() * logits.element_size() / 1e9
    label = f"{model} {rows}x{vocab}" + (f" cap {softcap:g}" if softcap else "")

    def report(what: str, ms: float, passes: int = 1, error: float | None = None) -> None:
        agree = "" if error is None else f"  max |lse - fp64| = {error:.1e}"
        print(f"{label:>28} {what:>22}: {ms * 1e3:7.1f} us  {passes * gigabytes / ms:5.2f} TB/s{agree}", flush=True)

    compiled = headloss._compiled(headloss._nll_and_lse)
    error = float((compiled(logits, targets, softcap)[1] - reference).abs().max())
    report("compiled two-stage", timed_ms(lambda: compiled(logits, targets, softcap), graph=True), error=error)
    lse = reference.float()
    dlogits = headloss._compiled(headloss._dlogits)
    report("gradient (read+write)", timed_ms(lambda: dlogits(logits, lse, targets, softcap), graph=True), passes=2)
    if softcap:  # what replaces both in training: the soft-capped head's one pass, which overwrites its input
        scratch = logits.clone()
        one_pass = timed_ms(lambda: head_kernel.capped_nll_and_grad_terms(scratch, targets, softcap), graph=True)
        report("one pass (read+write)", one_pass, passes=2)
    for config in configs:
        head_kernel.LSE_SLICE, head_kernel.LSE_BLOCK, head_kernel.LSE_WARPS = map(int, re.findall(r"\d+", config))
        try:
            error = float((head_kernel.logits_nll_and_lse(logits, targets, softcap)[1] - reference).abs().max())
            ms = timed_ms(lambda: headloss._nll_and_lse_kernel(logits, targets, softcap), graph=True)
            report(f"kernel {config}", ms, error=error)
        except Exception as failure:
            print(f"{label:>28} kernel {config}: {repr(failure)[:200]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16_384)
    parser.add_argument("--configs", default=CONFIGS, help="tiles MxNxK, warps, stages, minimum vocabulary splits")
    parser.add_argument("--pointer-loads", action="store_true", help="the kernel's tiles without tensor descriptors")
    parser.add_argument("--lse", default="", help="log-sum-exp settings SLICExBLOCKwWARPS (training's head)")
    args = parser.parse_args()
    from harness.kernels import head_kernel

    head_kernel.TMA = False if args.pointer_loads else None
    for model, (dim, vocab, softcap) in SHAPES.items():
        for cap in (None, softcap) if softcap else (None,):
            if args.lse:
                compare_lse(model, vocab, 256, args.lse.split(","), cap)
            else:
                compare(model, dim, vocab, cap, args.rows, args.configs.split(","))


if __name__ == "__main__":
    main()
