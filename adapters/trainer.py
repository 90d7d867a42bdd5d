"""The QLoRA / LoRA training loop: explicit code you can read top to bottom, no callback framework.

load base (NF4 for QLoRA) -> LoRA on all linear layers -> packed micro-batches -> loss over supervised tokens,
normalised by the step's supervised-token count across gradient accumulation -> clip -> AdamW -> warmup+cosine
-> eval loss every N steps, early stopping, best adapter kept -> checkpoints every N steps -> adapter + manifest.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from adapters import checkpoints
from adapters.config import TrainConfig
from adapters.data import TrainingData, prepare_training_data, read_training_data
from adapters.graphs import MicroStep, micro_step
from adapters.lora_addmm import use_lora_addmm
from adapters.loss import supervised_nll
from adapters.packing import Batch, collate, pack
from adapters.tokenize import TokenizedExample
from harness.backends import distributed
from harness.backends.hf import LoadedModel, ModelOptions, load_model
from harness.core.errors import HarnessError
from harness.core.progress import progress as progress_for
from harness.core.record import write_atomic
from harness.kernels import cudnn_attention
from harness.kernels.attention import caps_attention
from harness.kernels.headloss import output_head

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class TrainState:
    """Everything that changes during training besides the weights and the optimizer (saved at checkpoints)."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    best_eval_loss: float = math.inf
    best_step: int = 0
    evals_without_improvement: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0


def build_model(config: TrainConfig) -> tuple[Any, LoadedModel]:
    """The base model (quantized for QLoRA) with fresh, seeded LoRA adapters on it."""
    from peft import LoraConfig, get_peft_model

    options = ModelOptions(
        name=config.model, quant=config.quant, dtype=config.dtype, device=config.device, attention=config.attention
    )
    device = options.resolved_device()
    cuda = device.startswith("cuda")
    if config.cuda_graph and not cuda:
        raise HarnessError(f"CUDA graphs need a CUDA device, not {device}", field="cuda_graph", hint="set it false")
    loaded = load_model(options)
    base = loaded.model
    _keep_one_nf4_kernel_path(base)
    if config.attention == "auto" and cuda:
        _faster_attention(base, config)
    if config.keep_activations and cuda and base.config._attn_implementation in ("sdpa", cudnn_attention.NAME):
        # Measured (BENCHMARKS.md, runs 38-52): kept cuDNN attention outputs gave gradient norms of 1e5 in 4 runs,
        # intermittently (none in 12 later tries; cause not found). Flex attention has never failed so.
        raise HarnessError(
            "keep_activations with cuDNN's attention has given wrong gradients on a GPU (kept outputs, at times)",
            field="attention",
            hint="use attention: auto or flex_attention",
        )
    if config.gradient_checkpointing and not config.compile:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    if config.lora_addmm:
        use_lora_addmm(model)
    if config.mlp_chunks > 1:
        chunk_mlps(model, config.mlp_chunks)
    if config.compile:
        if config.gradient_checkpointing:
            # Compiled, checkpointing is the partitioner's job: keep each layer's input, recompute the rest inside
            # the compiled backward (fused), instead of re-entering the compiled forward through a wrapper. With
            # `keep_activations` above 0 it keeps what is dearest to recompute per byte (attention, matmuls).
            torch._functorch.config.activation_memory_budget = config.keep_activations
            if config.keep_projection_outputs:
                _keep_projection_outputs(model, config)
        compile_layers(model)
    return model, loaded


def _keep_projection_outputs(model: Any, config: TrainConfig) -> None:
    from adapters import kept_outputs  # inductor's pass machinery: imported where used

    kept_outputs.mark(model, config.keep_projection_outputs)
    torch._inductor.config.joint_custom_pre_pass = kept_outputs.MarkKept()
    torch._functorch.config.activation_memory_budget = config.keep_activations or kept_outputs.KEEP_BUDGET


def _faster_attention(model: Any, config: TrainConfig) -> None:
    """`attention: auto` on a GPU. Where the frontend is installed the model already loads with cuDNN's kernels
    (ModelOptions.resolved_attention: the sliding windows in the kernel, soft-capped logits through its score
    modifier). Without it, soft-capped models (Gemma 2) get flex attention, which also applies the cap in its kernel:
    transformers' own choice is eager (which materialises [rows x heads x T x T] scores) or, in some versions
    (5.17), sdpa, which drops the cap without a word. Any model with `keep_activations` gets flex attention: kept
    cuDNN outputs broke its gradients (sdpa's, runs 38-52)."""
    if config.keep_activations or (caps_attention(model.config) and not cudnn_attention.available()):
        model.set_attn_implementation("flex_attention")


def compile_layers(model: Any) -> None:
    """torch.compile each decoder layer in place (one graph per layer type, shared by the layers of that type).
    Layers, not the whole model: the LM head's chunk loop and the optimizer stay eager, compilation stays short."""
    decoder, _, _ = output_head(model)
    for layer in decoder.get_submodule("layers").children():
        layer.compile()


def chunk_mlps(model: Any, pieces: int) -> None:
    """Each decoder layer's MLP runs on `pieces` slices of its rows, one after the other. The MLP's intermediate
    activations ([tokens x intermediate size], several of them: the projections, their product, the gradients)
    are the largest working set of a checkpointed layer's backward; sliced, only one slice's exist at a time.
    The MLPs change class rather than module (parameter names, and saved adapters, stay the same), and all to one
    class, so that the compiled layers share one graph."""
    decoder, _, _ = output_head(model)
    for layer in decoder.get_submodule("layers").children():
        mlp: Any = layer.get_submodule("mlp")
        mlp.__class__ = _sliced(mlp.__class__)
        mlp.row_slices = pieces


@functools.cache
def _sliced(mlp_class: Any) -> Any:
    def forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
        pieces = hidden.chunk(self.row_slices, dim=0)
        return torch.cat([mlp_class.forward(self, piece) for piece in pieces], dim=0)

    return type(f"Sliced{mlp_class.__name__}", (mlp_class,), {"forward": forward})


def _keep_one_nf4_kernel_path(model: Any) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks NF4 weights the first time a layer runs in eval mode and
    uses another kernel from then on, so an evaluation would change the numerics of every later training step
    (and a resumed run, which has not evaluated yet, would drift from an uninterrupted one). Training keeps the
    one path that also computes gradients."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def micro_batch_schedule(n_rows: int, config: TrainConfig) -> list[list[list[int]]]:
    """Per optimizer step, its micro-batches of row indices: epochs of seeded shuffles, cut to max_steps."""
    micro: list[list[int]] = []
    epoch = 0
    steps_wanted = config.max_steps
    while epoch < config.epochs or (steps_wanted and len(micro) < steps_wanted * config.grad_accum):
        order = np.random.default_rng(config.seed + epoch).permutation(n_rows).tolist()
        micro += [order[i : i + config.batch_size] for i in range(0, n_rows, config.batch_size)]
        epoch += 1
    steps = [micro[i : i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]
    return steps[:steps_wanted] if steps_wanted else steps


def _rows(data: TrainingData, config: TrainConfig) -> list[list[TokenizedExample]]:
    if not config.packing:
        return [[example] for example in data.train]
    return [[data.train[i] for i in bin_] for bin_ in pack(data.train, config.max_seq_len)]


@torch.no_grad()
def eval_loss(model: Any, examples: list[TokenizedExample], config: TrainConfig, pad_id: int) -> float:
    """Mean NLL per supervised token over the eval set."""
    model.eval()
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    starts = distributed.shard(list(range(0, len(ordered), config.batch_size)))
    totals = torch.zeros(2, dtype=torch.float64)  # NLL, supervised tokens
    for start in starts:
        batch = collate([[e] for e in ordered[start : start + config.batch_size]], pad_id)
        totals += torch.tensor([float(supervised_nll(model, batch.to(model.device))), batch.supervised_tokens])
    distributed.sum_tensors(totals)
    model.train()
    return float(totals[0] / totals[1])


def make_optimizer(model: Any, config: TrainConfig, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    from transformers import get_cosine_schedule_with_warmup

    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = trainable[0].is_cuda  # one kernel for all the adapter's tensors instead of a dozen launches per step
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, total_steps), total_steps)
    return optimizer, scheduler


def train_step(
    model: Any, optimizer: Any, scheduler: Any, batches: list[Batch], config: TrainConfig, forward_backward: MicroStep
) -> dict:
    """One optimizer step over its micro-batches (host tensors; `forward_backward` is `graphs.micro_step`'s); the
    loss is normalised by the step's supervised tokens and read back once, after the optimizer has been queued.

    Under a launcher the micro-batches are shared out across processes and the adapter's gradients summed
    (all-reduce), so a step is the same global batch whatever the number of processes."""
    n_supervised = sum(batch.supervised_tokens for batch in batches)
    optimizer.zero_grad(set_to_none=False)  # zeroed in place: a CUDA graph accumulates into these tensors
    step_nll = torch.zeros(1, dtype=torch.float64, device=model.device)  # on the device: NCCL reduces it there
    for batch in distributed.shard(batches):
        step_nll += forward_backward(batch, n_supervised)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        if parameter.grad is None:  # a rank with no micro-batch this step still joins the all-reduce
            parameter.grad = torch.zeros_like(parameter)
    distributed.sum_tensors(step_nll, *(p.grad for p in trainable))
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
    learning_rate = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    tokens = sum(int((batch.segment_ids > 0).sum()) for batch in batches)
    loss = float(step_nll) / n_supervised
    return {"loss": loss, "lr": learning_rate, "grad_norm": float(grad_norm), "tokens": tokens}


def _evaluate_and_track(
    model: Any, data: TrainingData, config: TrainConfig, state: TrainState, out: Path, pad_id: int
) -> bool:
    """Eval loss at this step; keep the best adapter; returns True when patience has run out."""
    loss = eval_loss(model, data.eval, config, pad_id)
    state.eval_history.append({"step": state.step, "eval_loss": loss})
    if loss < state.best_eval_loss:
        state.best_eval_loss, state.best_step, state.evals_without_improvement = loss, state.step, 0
        if distributed.is_main():
            checkpoints.save_adapter(model, out / checkpoints.BEST)
        distributed.barrier()
    else:
        state.evals_without_improvement += 1
    return config.patience is not None and state.evals_without_improvement >= config.patience


def _progress(console: Console) -> Progress:
    return progress_for(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:.0f} tok/s"),
        TimeRemainingColumn(),
        console=console,
        disable=not distributed.is_main(),
    )


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def train(
    config: TrainConfig,
    data_path: Path,
    out: Path,
    eval_path: Path | None = None,
    resume: bool = False,
    console: Console | None = None,
) -> Path:
    """Train an adapter into `out` (PEFT safetensors + manifest.json); returns `out`."""
    if not resume and ((out / MANIFEST).is_file() or checkpoints.complete_checkpoints(out)):
        raise HarnessError(
            "the output folder already holds an adapter or its checkpoints",
            path=out,
            field="--out",
            hint="pass --resume to continue its training, or choose another --out",
        )
    raw_data = read_training_data(config, data_path, eval_path)  # bad rows stop the run before the model loads
    distributed.init_from_env()
    console = console or Console(stderr=True)
    model, loaded = build_model(config)
    pad_id = loaded.tokenizer.pad_token_id
    data = prepare_training_data(config, raw_data, loaded.tokenizer)
    rows = _rows(data, config)
    schedule = micro_batch_schedule(len(rows), config)
    optimizer, scheduler = make_optimizer(model, config, len(schedule))
    forward_backward = micro_step(model, config.cuda_graph)
    shape = (config.batch_size, config.max_seq_len) if config.cuda_graph else None  # one graph for all batches
    state = TrainState()
    if resume:
        state = checkpoints.restore_latest(out, model, optimizer, scheduler, config, TrainState) or state
    if data.eval and state.step == 0:
        state.eval_history.append({"step": 0, "eval_loss": eval_loss(model, data.eval, config, pad_id)})
    model.train()
    with _progress(console) as progress:
        bar = progress.add_task("train", total=len(schedule), completed=state.step, loss=math.nan, lr=0.0, tps=0.0)
        while state.step < len(schedule):
            started = time.perf_counter()
            batches = [collate([rows[r] for r in micro], pad_id, shape) for micro in schedule[state.step]]
            record = train_step(model, optimizer, scheduler, batches, config, forward_backward)
            state.train_seconds += time.perf_counter() - started
            state.step += 1
            state.tokens_seen += record["tokens"]
            state.history.append({"step": state.step, **record})
            last = state.step == len(schedule)
            stop = False
            if data.eval and (state.step % config.eval_every == 0 or last):
                stop = _evaluate_and_track(model, data, config, state, out, pad_id)
            if (state.step % config.save_every == 0 or last or stop) and distributed.is_main():
                checkpoints.save(out, state.step, model, optimizer, scheduler, config, state)
            distributed.barrier()
            tps = state.tokens_seen / max(state.train_seconds, 1e-9)
            progress.update(bar, advance=1, loss=record["loss"], lr=record["lr"], tps=tps)
            if stop:
                log.info("early stopping at step %d: no eval improvement in %d evals", state.step, config.patience)
                break
    if distributed.is_main():
        finish(out, model, loaded, data, config, state)
    distributed.barrier()
    return out


def finish(
    out: Path, model: Any, loaded: LoadedModel, data: TrainingData, config: TrainConfig, state: TrainState
) -> Path:
    """Write the adapter (the best by eval loss, if evaluated) and its manifest, the manifest last."""
    best = out / checkpoints.BEST
    checkpoints.publish_adapter(best if best.exists() else None, model, out)
    manifest = {
        "base_model": config.model,
        "base_fingerprint": loaded.base_fingerprint,
        "data_fingerprint": data.fingerprint,
        "config": config.model_dump(mode="json"),
        "steps": state.step,
        "loss_curve": state.history,
        "eval_curve": state.eval_history,
        "best_step": state.best_step or None,
        "best_eval_loss": state.best_eval_loss if math.isfinite(state.best_eval_loss) else None,
        "train_rows": len(data.train),
        "eval_rows": len(data.eval),
        "data_report": {
            "exact_duplicates": len(data.report.exact_duplicates),
            "normalized_duplicates": len(data.report.normalized_duplicates),
            "over_long": len(data.report.over_long),
            "leaked": len(data.report.leaked),
            "skipped_bad_rows": len(data.report.skipped),
        },
        "wall_seconds": state.train_seconds,
        "tokens_per_second": state.tokens_seen / max(state.train_seconds, 1e-9),
        "peak_memory_bytes": _peak_memory(loaded.device),
        "device": loaded.device.type,
        "world_size": distributed.world_size(),
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
    return out
