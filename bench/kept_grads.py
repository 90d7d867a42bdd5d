"""Compiled, checkpointed layers against eager ones: do their LoRA gradients agree, per attention kernel and share
of kept activations? A diagnostic for the trainer's `keep_activations` (BENCHMARKS.md, runs 38-52: kept cuDNN
attention outputs trained with gradient norms of 1e5). GPU only.

    python bench/kept_grads.py --contenders sdpa-keep0,sdpa-keep20,flex-keep20,sdpa-keep20-graph

A model with the real config's shapes but `--layers` decoder layers (random weights, NF4 base, LoRA r16 with
random B so that every adapter matrix has a gradient), one micro-batch of `--rows` x `--seq` tokens. Each
contender runs in its own process: the eager micro-step's gradients, then the compiled layers' (partitioner
budget `keepN` percent, `-graph` replayed from a CUDA graph, `-accum2` two micro-batches accumulated), and prints
the largest relative difference over the adapter's matrices, for each of `--steps` optimizer steps (AdamW,
learning rate 2e-4, each model stepping on its own gradients). `-fresh`: new rows every step (else the capture's);
`-same`: every micro-batch of a step the same rows; `-sync`: the device synchronised after each micro-batch;
`-blocking`: every kernel launch synchronous (`CUDA_LAUNCH_BLOCKING=1`, set before CUDA starts);
`-trainer`: no eager model, the trainer's steps (its optimizer, clipping, adapter B from zero) under a CUDA graph.
Contender names: `sdpa` (cuDNN kernels), `nocudnn` (sdpa without them), `flex`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import MODELS, emit, environment, random_checkpoint, random_lora_b, run_isolated, training_rows


def build(config: Any, random_b: bool = True, keep: float | None = None) -> Any:
    """The trainer's model; with `keep`, its layers compiled under that partitioner budget (set here, not through
    the config: the trainer refuses kept activations with sdpa on a GPU, the case under study)."""
    from adapters.trainer import build_model, compile_layers

    model, _ = build_model(config)
    if random_b:
        random_lora_b(model)
    if keep is not None:
        torch._functorch.config.activation_memory_budget = keep
        compile_layers(model)
    return model.train()


def train_config(folder: Path, args: argparse.Namespace, attention: str) -> Any:
    from adapters.config import TrainConfig

    return TrainConfig(model=str(folder), quant="nf4", device="cuda", lora_r=16, lora_alpha=32, lora_dropout=0.0,
                      max_seq_len=args.seq, batch_size=args.rows, attention=attention)  # fmt: skip


def gradients(model: Any, batches: list[Any], step: Any, sync: bool = False) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=False)
    n_supervised = sum(batch.supervised_tokens for batch in batches)
    for batch in batches:
        step(batch, n_supervised)
        if sync:  # `-sync`: the device idle between micro-batches
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def contender_row(folder: Path, args: argparse.Namespace, contender: str) -> dict[str, Any]:
    from adapters.graphs import eager_micro_step, micro_step
    from adapters.packing import collate

    if "-blocking" in contender:  # read when the CUDA context is created: nothing has touched CUDA yet
        os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
    attention = "flex_attention" if contender.startswith("flex") else "sdpa"
    if contender.startswith("nocudnn"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    keep = int(found.group(1)) / 100 if (found := re.search(r"-keep(\d+)", contender)) else 0.0
    accumulation = int(m.group(1)) if (m := re.search(r"-accum(\d+)", contender)) else 1

    def step_batches(seed: int) -> list[Any]:  # `-same`: every micro-batch the same rows
        rows = training_rows(args.rows * accumulation, args.seq, seed)
        starts = [0] * accumulation if "-same" in contender else range(0, len(rows), args.rows)
        return [collate(rows[i : i + args.rows], pad_id=0) for i in starts]

    batches = step_batches(0)
    config = train_config(folder, args, attention)
    if "-trainer" in contender:  # no eager model: the trainer's own steps, B from zero, as bench/train_speed.py
        return trainer_steps(config, args, batches, keep)
    eager = build(config)
    compiled = build(config, keep=keep)
    step = micro_step(compiled, cuda_graph="-graph" in contender)
    gradients(compiled, batches, step)  # the first call compiles (and warms up / captures a graph)
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-4) for m in (eager, compiled)]
    errors, norms, eager_norms = [], [], []
    for number in range(args.steps):  # the same update from each model's own gradients
        batches = step_batches(number + 1) if "-fresh" in contender else batches
        reference = gradients(eager, batches, eager_micro_step(eager))
        ours = gradients(compiled, batches, step, sync="-sync" in contender)
        errors.append(max(float((ours[n] - g).norm() / g.norm()) for n, g in reference.items()))
        norms.append(float(torch.stack([g.norm() for g in ours.values()]).norm()))
        eager_norms.append(float(torch.stack([g.norm() for g in reference.values()]).norm()))
        for optimizer in optimizers:
            optimizer.step()
    return {"max_rel_error": [round(e, 4) for e in errors], "grad_norm": [round(n, 4) for n in norms],
            "eager_grad_norm": [round(n, 4) for n in eager_norms]}  # fmt: skip


def trainer_steps(config: Any, args: argparse.Namespace, batches: list[Any], keep: float) -> Any:
    from adapters.graphs import micro_step
    from adapters.trainer import make_optimizer, train_step

    model = build(config, random_b=False, keep=keep)
    optimizer, scheduler = make_optimizer(model, config, 1000)
    step = micro_step(model, cuda_graph=True)
    records = [train_step(model, optimizer, scheduler, batches, config, step) for _ in range(args.steps + 1)]
    return {"grad_norm": [round(r["grad_norm"], 4) for r in records], "losses": [round(r["loss"], 5) for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", choices=MODELS)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps, each compared")
    parser.add_argument("--contenders", default="sdpa-keep0,sdpa-keep20,flex-keep20")
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)  # set for child runs
    args = parser.parse_args()
    if args.checkpoint is not None:
        (contender,) = args.contenders.split(",")
        try:
            result = contender_row(args.checkpoint, args, contender)
        except Exception as error:
            result = {"error": repr(error)[:500]}
        shape = {"model": args.model, "layers": args.layers, "rows": args.rows, "seq": args.seq}
        emit({"what": "kept_grads", "contender": contender, **shape, **result}, args.out)
        return
    emit(environment(), args.out)
    with tempfile.TemporaryDirectory() as scratch:
        random_checkpoint(args.model, Path(scratch), layers=args.layers)
        for contender in args.contenders.split(","):
            run_isolated(__file__, sys.argv[1:], ["--contenders", contender, "--checkpoint", scratch])
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
