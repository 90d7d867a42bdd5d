"""The working set of a compiled, checkpointed decoder layer's backward: the largest total of the buffers its
generated code holds at once (the layer's saved inputs and the weights excluded), read from inductor's output
code. Runs on a CPU: which buffers exist and when they are freed is inductor's plan, the same for a GPU's
graph; sizes here are fp32 (the GPU's bf16 halves them).

    python bench/layer_buffers.py --contenders peft,addmm        # Gemma 3 270M's layers, 8 x 1024 tokens

`peft`: peft's LoRA forward; `addmm`: `lora_addmm: true` (adapters/lora_addmm.py). The model is the real
config's with `--layers` layers (one sliding, one full) and a small vocabulary (the head is not compiled),
random weights, NF4 base, LoRA r16 on all linear layers, the trainer's `build_model` with `compile` and
`gradient_checkpointing`; one forward and backward. Each row also records the loss and the gradients' sum,
which must agree between contenders.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import emit, environment, random_checkpoint, random_lora_b, run_isolated, training_rows

VOCAB = 4096  # small: the LM head is not part of the compiled layers under study


def backward_peaks(code: list[str]) -> list[tuple[int, list[int]]]:
    """Per generated backward graph: the peak of live buffer elements and the sizes live then, largest first."""
    peaks = []
    for block in (c for c in code if "tangents_" in c):
        live: dict[str, int] = {}
        peak: tuple[int, list[int]] = (0, [])
        for line in block[block.index("def call(") :].splitlines():
            line = line.strip()
            if made := re.match(r"(buf\d+) = empty_strided_\w+\(\(([^)]*)\)", line):
                live[made[1]] = math.prod(int(n) for n in re.findall(r"\d+", made[2]))
            elif made := re.match(r"assert_size_stride\((buf\d+), \(([^)]*)\)", line):  # an extern op's output
                live.setdefault(made[1], math.prod(int(n) for n in re.findall(r"\d+", made[2])))
            elif reuse := re.match(r"(buf\d+) = .*?; del (buf\d+)\s+# reuse", line):
                live[reuse[1]] = live.pop(reuse[2], 0)
            if line.startswith("del "):
                for name in line[4:].split(","):
                    live.pop(name.strip(), None)
            if sum(live.values()) > peak[0]:
                peak = (sum(live.values()), sorted(live.values(), reverse=True))
        peaks.append(peak)
    return peaks


def contender_row(folder: Path, args: argparse.Namespace, contender: str) -> dict[str, Any]:
    from adapters.config import TrainConfig
    from adapters.loss import supervised_nll
    from adapters.packing import collate
    from adapters.trainer import build_model

    code: list[str] = []
    torch._inductor.config.fx_graph_cache = False  # a cached graph's code is not logged again
    handler = logging.Handler()
    handler.emit = lambda record: code.append(record.getMessage())  # type: ignore[method-assign]
    torch._logging.set_logs(output_code=True)
    from torch._inductor.codecache import output_code_log

    output_code_log.addHandler(handler)
    config = TrainConfig(model=str(folder), quant="nf4", device="cpu", compile=True, gradient_checkpointing=True,
                         lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_addmm=contender == "addmm")  # fmt: skip
    model, _ = build_model(config)
    random_lora_b(model)
    batch = collate(training_rows(args.rows, args.seq, seed=0, high=VOCAB), pad_id=0, shape=(args.rows, args.seq))
    loss = supervised_nll(model.train(), batch, static=True)
    loss.backward()
    peaks = backward_peaks(code)
    tokens = args.rows * args.seq
    return {"what": "layer_buffers", "contender": contender, "model": args.model, "tokens": tokens,
            "peak_mib_fp32": max(p for p, _ in peaks) * 4 / 2**20, "graphs": len(peaks),
            "live_at_peak_in_tokens_x_width": [round(size / tokens, 1) for size in max(peaks)[1][:12]],
            "loss": loss.item(), "grad_sum": sum(float(p.grad.double().abs().sum()) for p in model.parameters()
                                                 if p.grad is not None)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", choices=["gemma-3-270m", "gemma-2-2b-shape"])
    parser.add_argument("--contenders", default="peft,addmm")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)  # set for child runs
    args = parser.parse_args()
    if args.checkpoint is not None:  # a child: one contender, its row on stdout
        emit(contender_row(args.checkpoint, args, args.contenders), None)
        return
    emit(environment(), args.out)
    with tempfile.TemporaryDirectory() as scratch:
        folder = random_checkpoint(args.model, Path(scratch), layers=args.layers, vocab=VOCAB, tokenizer=False)
        for contender in args.contenders.split(","):  # each in its own process: no compiled graph carried over
            rows = run_isolated(__file__, sys.argv[1:], ["--contenders", contender, "--checkpoint", str(folder)])
            if args.out is not None:  # the child printed them
                with args.out.open("a") as handle:
                    handle.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
