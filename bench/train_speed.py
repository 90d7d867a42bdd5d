"""QLoRA / LoRA training speed and memory: our trainer against TRL's SFTTrainer, same model, data and config,
in one run, each contender in its own process (random-init models from real configs; see bench/common.py).

    python bench/train_speed.py --model gemma-3-270m --quant nf4 --contenders ours,ours-compile,trl
    python bench/train_speed.py --device cpu --seq 128 --batch 4 --steps 3 --contenders ours,trl   # 2-core CPU

Equal config: `--seq` tokens per sequence, `--batch` sequences per optimizer step (one micro-batch unless
-accumN), LoRA r16 / alpha 32 / no dropout on all linear layers, NF4 double-quant base, bf16 compute on a GPU (fp32
on a CPU), every position supervised. Tokens/s is the median step after warm-up; memory is the allocator's peak
from model load to the last step. Contenders:
  ours                our train_step (no gradient checkpointing)     ours-ckpt     ... with gradient checkpointing
  ours-compile        ... decoder layers under torch.compile          ours-compile-ckpt  both (activation budget)
  ...-graph           any of ours with `cuda_graph: true` (each micro-batch's forward and backward one CUDA graph)
  ...-chunkN          any of ours with the LM head's chunks at N MiB of logits (headloss.LOGIT_CHUNK_BYTES)
  ...-lseN            ... the head's log-sum-exp in N slices of the vocabulary (harness.kernels.headloss.LSE_SLICES)
  ...-inductorlse     ... that log-sum-exp compiled by inductor, not harness.kernels.head_kernel's (headloss.LSE_KERNEL)
  ...-twopass         ... a soft-capped head's log-sum-exp pass, then its gradient's (headloss.CAPPED_ONE_PASS off)
  ...-accumN          ... the step's sequences in N micro-batches (gradient accumulation; the same step)
  ...-sdpa, -eager, -flex, -cudnn   ... with that attention instead of `--attention`
  ...-mlpN            ... each MLP run on N slices of the micro-batch's rows (`mlp_chunks`)
  ...-keepN           ... compiled + checkpointing keeping N% of a layer's activations (`keep_activations`)
  ...-savedN          ... -addmm with the last N layers keeping their down projections' outputs
                      (`keep_projection_outputs`, adapters/kept_outputs.py)
  ...-nocudnn         ... sdpa without cuDNN's attention kernels (flash / memory-efficient instead)
  ...-addmm           ... LoRA products added inside their matmuls (`lora_addmm`; bench/layer_buffers.py)
  ...-nowiden         ... -addmm with every product added into the output (adapters.lora_addmm.WIDEN off)
  ...-nogroup         ... -addmm with each projection its own operator (adapters.lora_addmm.SIBLINGS empty)
  ...-bnb             ... -addmm with NF4 weights dequantized by bitsandbytes and copied (nf4.KERNEL off)
  ...-fp32            ... computing in float32 (a reference for the bf16 contenders' losses)
  ...-autotune        ... compiled layers under inductor's max-autotune (Triton matmul templates, epilogues fused)
  trl                 TRL SFTTrainer (gradient checkpointing, its default)
`--memory-report ours-...` records the allocator's history and writes what is allocated at the peak
(bench/memory_peak.py).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    MODELS,
    emit,
    environment,
    peak_memory,
    profile_table,
    random_checkpoint,
    random_ids,
    run_isolated,
    timed,
    training_rows,
)

LORA = {"r": 16, "alpha": 32}
ATTENTION_SUFFIXES = {"sdpa": "sdpa", "eager": "eager", "flex": "flex_attention", "cudnn": "cudnn"}


def attention_of(contender: str, args: argparse.Namespace) -> str:
    suffixes = re.findall(r"-([a-z]+)", contender)
    return next((ATTENTION_SUFFIXES[s] for s in suffixes if s in ATTENTION_SUFFIXES), args.attention)


def ours(checkpoint: Path, args: argparse.Namespace, contender: str) -> dict[str, Any]:
    from adapters import lora_addmm
    from adapters.config import TrainConfig
    from adapters.graphs import micro_step
    from adapters.packing import collate
    from adapters.trainer import build_model, make_optimizer, train_step
    from harness.kernels import headloss, nf4

    def option(name: str, default: int) -> int:  # `-nameN` in the contender's name
        found = re.search(rf"-{name}(\d+)", contender)
        return int(found.group(1)) if found else default

    headloss.LOGIT_CHUNK_BYTES = option("chunk", headloss.LOGIT_CHUNK_BYTES // 2**20) * 2**20
    headloss.LSE_SLICES = option("lse", headloss.LSE_SLICES)
    headloss.LSE_KERNEL = "-inductorlse" not in contender
    headloss.CAPPED_ONE_PASS = "-twopass" not in contender
    lora_addmm.WIDEN = "-nowiden" not in contender
    if "-nogroup" in contender:
        lora_addmm.SIBLINGS = ()
    nf4.KERNEL = "-bnb" not in contender
    if "-nowiden" in contender:  # it changes the operator's fake, not the traced graph:
        torch._inductor.config.fx_graph_cache = False  # a compile cached by another contender would not see it
        torch._functorch.config.enable_autograd_cache = False
    accumulation = option("accum", 1)
    if "-nocudnn" in contender:
        torch.backends.cuda.enable_cudnn_sdp(False)
    if "-autotune" in contender:  # what torch.compile(mode="max-autotune-no-cudagraphs") sets
        import torch._inductor.config as inductor

        inductor.max_autotune = True
        inductor.coordinate_descent_tuning = True
    assert args.batch % accumulation == 0, f"{args.batch} sequences do not split into {accumulation} micro-batches"
    config = TrainConfig(
        model=str(checkpoint),
        quant=args.quant,
        device=args.device,
        dtype="float32" if "-fp32" in contender else "auto",
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        max_seq_len=args.seq,
        batch_size=args.batch // accumulation,
        grad_accum=accumulation,
        gradient_checkpointing="ckpt" in contender,
        mlp_chunks=option("mlp", 1),
        keep_activations=option("keep", 0) / 100,
        keep_projection_outputs=option("saved", 0),
        lora_addmm="-addmm" in contender,
        compile="compile" in contender,
        cuda_graph="graph" in contender,
        attention=attention_of(contender, args),
    )
    device = torch.device(args.device)
    history = None
    if contender in args.memory_report.split(","):
        history = (args.out.parent if args.out else Path(".")) / f"memory-train-{args.model}-{contender}.txt"
    with peak_memory(device, history) as memory:
        model, _ = build_model(config)
        model.train()  # as the trainer does: dropout off here (0.0), gradient checkpointing only in train mode
        optimizer, scheduler = make_optimizer(model, config, 1000)
        forward_backward = micro_step(model, config.cuda_graph)
        rows = training_rows(args.batch, args.seq)
        size = config.batch_size
        batches = [collate(rows[start : start + size], pad_id=0) for start in range(0, args.batch, size)]
        records: list[dict[str, Any]] = []

        def step() -> None:
            records.append(train_step(model, optimizer, scheduler, batches, config, forward_backward))

        started = time.perf_counter()
        step()
        first_step_s = time.perf_counter() - started  # includes compilation for the compiled contenders
        every: list[float] = []
        seconds = timed(step, device, args.steps, warmup=args.warmup, every=every)
    if history is not None:
        print(f"--- allocated at the peak: {contender} ---\n{history.read_text()}", flush=True)
    if contender in args.profile.split(","):
        profile_table(step, device, args.out, f"train-{args.model}-{contender}")
    grad_norm = records[-1]["grad_norm"]
    assert math.isfinite(grad_norm) and grad_norm > 0, f"gradient norm {grad_norm}: the step computed nothing"
    return {
        "tokens_per_s": args.batch * args.seq / seconds,
        "step_s": seconds,
        "steps_ms": [round(s * 1e3, 1) for s in every],  # in the order timed: a drift shows
        "first_step_s": first_step_s,
        "grad_norm": grad_norm,
        "losses": [round(r["loss"], 5) for r in records],
        "implementation": model.config._attn_implementation,  # `--attention auto` resolved (adapters.trainer)
        **memory,
    }


def trl(checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    step_ends: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_: Any, **__: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())

    quant = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        if args.quant == "nf4"
        else None
    )
    steps = args.warmup + args.steps
    with peak_memory(device) as memory:
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=dtype, quantization_config=quant, device_map={"": str(device)}
        )
        data = Dataset.from_dict({"input_ids": random_ids(args.batch * steps, args.seq).tolist()})
        sft = SFTConfig(
            output_dir=tempfile.mkdtemp(),
            max_length=args.seq,
            packing=False,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            gradient_checkpointing=True,
            bf16=cuda,
            use_cpu=not cuda,
            learning_rate=2e-4,
            max_steps=steps,
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
        )
        lora = LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        trainer = SFTTrainer(
            model=model,
            args=sft,
            train_dataset=data,
            processing_class=AutoTokenizer.from_pretrained(checkpoint),
            peft_config=lora,
            callbacks=[StepTimer()],
        )
        trainer.train()
    step_seconds = sorted(b - a for a, b in zip(step_ends[args.warmup - 1 :], step_ends[args.warmup :], strict=False))
    seconds = step_seconds[len(step_seconds) // 2]
    return {"tokens_per_s": args.batch * args.seq / seconds, "step_s": seconds, **memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", choices=MODELS)
    parser.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", default="auto", choices=["auto", "eager", "sdpa", "flex_attention", "cudnn"])
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--contenders", default="ours,trl")
    parser.add_argument("--profile", default="", help="comma list of our contenders to torch-profile")
    parser.add_argument("--memory-report", default="", help="our contenders to report peak memory of")
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)  # set for child runs
    args = parser.parse_args()
    if args.checkpoint is not None:  # a child: one contender, its row on stdout
        (contender,) = args.contenders.split(",")
        try:
            result = trl(args.checkpoint, args) if contender == "trl" else ours(args.checkpoint, args, contender)
        except Exception as error:  # reported as a row: one failing contender must not hide the others
            result = {"error": repr(error)[:500]}
        shape = {"model": args.model, "quant": args.quant, "seq": args.seq, "batch": args.batch}
        if contender != "trl":
            shape["attention"] = attention_of(contender, args)
        emit({"what": "train", "contender": contender, **shape, **result}, args.out)
        return
    emit(environment(), args.out)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = random_checkpoint(args.model, Path(scratch) / "model")
        results = {
            c: run_isolated(__file__, sys.argv[1:], ["--contenders", c, "--checkpoint", str(checkpoint)])[-1]
            for c in args.contenders.split(",")
        }
    peer = results.get("trl", {}).get("tokens_per_s")
    for contender, result in results.items():
        if peer and "tokens_per_s" in result and contender != "trl":
            ratio = result["tokens_per_s"] / peer
            figures = f"{result['tokens_per_s']:>9.0f} tok/s {result['peak_gib']:6.2f} GiB"
            print(f"{contender:>18}: {figures}  {ratio:.2f}x TRL")


if __name__ == "__main__":
    main()
