"""GPU speed and memory: our trainer step and perplexity path against in-run peers, on random-init models built
from real configs (speed and memory do not depend on the weights' values).

    python bench/gpu_speed.py --model gemma-3-270m --steps 6 [--quant nf4|none] [--out results.jsonl]

Peers run in the same process, same model, same data:
- training: a plain HF + peft loop (labels -> full-vocabulary logits, gradient checkpointing as TRL's default);
- perplexity: an HF forward with `labels` on the same 16 x 1024 batch (the three-way check with lm-eval's
  `loglikelihood_rolling` needs lm-eval, whose dependencies do not fit the device's carry budget).
Prints tokens/s, peak GPU memory and the ratio of ours to the peer.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).parent / "configs"
SEQ, TRAIN_BATCH, PPL_BATCH = 1024, 8, 16


def save_random_model(name: str, folder: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(CONFIGS / f"{name}.json")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def timed(fn: Any, steps: int, warmup: int = 2) -> tuple[float, float]:
    """(seconds per call after warm-up, peak GiB)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps, torch.cuda.max_memory_allocated() / 2**30


def ours_training(checkpoint: Path, quant: str, steps: int, vocab: int) -> dict[str, Any]:
    from adapters.config import TrainConfig
    from adapters.packing import collate
    from adapters.tokenize import TokenizedExample
    from adapters.trainer import build_model, make_optimizer, train_step

    config = TrainConfig(
        model=str(checkpoint),
        quant=quant,
        device="cuda",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        max_seq_len=SEQ,
        batch_size=TRAIN_BATCH,
    )
    model, _ = build_model(config)
    optimizer, scheduler = make_optimizer(model, config, 1000)
    ids = torch.randint(3, vocab, (TRAIN_BATCH, SEQ)).tolist()
    batch = collate([[TokenizedExample(row, [-100, *row[1:]], 0)] for row in ids], pad_id=0)
    records: list[dict[str, Any]] = []
    seconds, peak = timed(lambda: records.append(train_step(model, optimizer, scheduler, [batch], config)), steps)
    grad_norm = records[-1]["grad_norm"]
    return {"tokens_per_s": TRAIN_BATCH * SEQ / seconds, "peak_gib": peak, "grad_norm": grad_norm}


def peer_training(checkpoint: Path, quant: str, steps: int, vocab: int) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        if quant == "nf4"
        else None
    )
    base = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16, quantization_config=bnb, device_map={"": "cuda"}
    )
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
    model = get_peft_model(
        base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, vocab, (TRAIN_BATCH, SEQ), device="cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()

    seconds, peak = timed(step, steps)
    return {"tokens_per_s": TRAIN_BATCH * SEQ / seconds, "peak_gib": peak}


@torch.no_grad()
def perplexity_pair(checkpoint: Path, steps: int, vocab: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from harness.compute import Window, window_nll
    from harness.models import LoadedModel, ModelOptions

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, device_map={"": "cuda"}).eval()
    tokenizer = type("Pad", (), {"pad_token_id": 0})()
    loaded = LoadedModel(
        options=ModelOptions(name=str(checkpoint), device="cuda"),
        checkpoint=checkpoint,
        base_fingerprint="random",
        _model=model,
        _tokenizer=tokenizer,
    )
    ids = torch.randint(3, vocab, (PPL_BATCH, SEQ))
    windows = [Window(i, row, 1) for i, row in enumerate(ids.tolist())]
    ours_nll: list[float] = []
    ours_s, ours_peak = timed(lambda: ours_nll.append(sum(n for n, _ in window_nll(loaded, windows))), steps)
    gpu_ids = ids.cuda()
    peer_loss: list[float] = []
    peer_s, peer_peak = timed(lambda: peer_loss.append(float(model(input_ids=gpu_ids, labels=gpu_ids).loss)), steps)
    tokens = PPL_BATCH * (SEQ - 1)
    return {
        "ours_tokens_per_s": PPL_BATCH * SEQ / ours_s,
        "ours_peak_gib": ours_peak,
        "peer_tokens_per_s": PPL_BATCH * SEQ / peer_s,
        "peer_peak_gib": peer_peak,
        "ours_ppl": math.exp(ours_nll[-1] / tokens),
        "peer_ppl": math.exp(peer_loss[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m", choices=["gemma-3-270m", "gemma-2-2b-shape"])
    parser.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip", default="", help="comma list of: train, ppl")
    args = parser.parse_args()
    rows = [{"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}]
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = save_random_model(args.model, Path(scratch) / "model")
        vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
        if "train" not in args.skip:
            ours = ours_training(checkpoint, args.quant, args.steps, vocab)
            torch.cuda.empty_cache()
            peer = peer_training(checkpoint, args.quant, args.steps, vocab)
            rows.append(
                {
                    "what": "train",
                    "model": args.model,
                    "quant": args.quant,
                    "ours": ours,
                    "peer": peer,
                    "ratio": ours["tokens_per_s"] / peer["tokens_per_s"],
                }
            )
            torch.cuda.empty_cache()
        if "ppl" not in args.skip:
            pair = perplexity_pair(checkpoint, args.steps, vocab)
            rows.append(
                {
                    "what": "perplexity",
                    "model": args.model,
                    **pair,
                    "ratio": pair["ours_tokens_per_s"] / pair["peer_tokens_per_s"],
                }
            )
    for row in rows:
        print(json.dumps(row))
    if args.out:
        with args.out.open("a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
