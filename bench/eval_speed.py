"""Evaluation speed: our perplexity and generation paths against a plain HF forward and lm-eval-harness (HF
backend), same model and texts, in one run, each contender in its own process (random-init models from real
configs; see bench/common.py).

    python bench/eval_speed.py --model gemma-3-270m --ppl ours,ours-compile,hf,lmeval --gen ours,ours-compile,lmeval
    python bench/eval_speed.py --device cpu --texts 8 --seq 256 --prompts 8 --new-tokens 16   # 2-core CPU

Perplexity: `--texts` random texts of at most `--seq` tokens (BOS first), `--batch` at a time. Contenders: ours
(harness.backends.hf_requests.queue_rolling, driven as `harness run` drives it), ours-compile (decoder compiled),
a `-chunked` suffix on either (the LM head in chunks instead of harness.kernels.head_kernel), a `-deftiles` suffix
(flex attention on torch's default tiles, not harness.kernels.attention's tuned ones), hf (forward with `labels`,
full logits; tokenized before timing), lmeval (`HFLM.loglikelihood_rolling`). The perplexities must agree.
Generation: `--prompts` prompts of 128 random tokens, `--new-tokens` greedy tokens each, one batch. Contenders:
ours (harness.backends.hf_requests.generate), ours-compile (static KV cache, compiled decoding step), lmeval
(`HFLM.generate_until`). Tokens/s counts the generated text's tokens, re-tokenized, for everyone alike.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch

PROMPT_TOKENS = 128


def texts_of_at_most(tokenizer: Any, count: int, tokens: int, seed: int) -> list[str]:
    """Texts that tokenize to at most `tokens` ids (decoded random ids, trimmed until they re-encode short)."""
    texts = []
    for row in common.random_ids(count, tokens, seed).tolist():
        text = tokenizer.decode(row)
        while len(ids := tokenizer(text, add_special_tokens=False).input_ids) > tokens:
            text = tokenizer.decode(ids[:tokens])
        texts.append(text)
    return texts


def load_ours(checkpoint: Path, args: argparse.Namespace, contender: str) -> Any:
    from harness.backends.hf import ModelOptions, load_model

    options = ModelOptions(
        name=str(checkpoint), device=args.device, attention=args.attention, compile="compile" in contender
    )
    return load_model(options)


def ppl_ours(checkpoint: Path, texts: list[str], args: argparse.Namespace, contender: str) -> tuple[float, int, Any]:
    from harness.backends.hf_requests import queue_rolling
    from harness.evaluation.runner import pipelined
    from harness.kernels import attention, headloss

    headloss.FUSED_KERNEL = "chunked" not in contender
    if "deftiles" in contender:
        attention._TUNED.clear()
    loaded = load_ours(checkpoint, args, contender)
    loaded.model  # noqa: B018 - load the weights before timing

    def run() -> Any:
        # As `harness run` drives it: texts longest first, `--batch` texts per call, one call in flight.
        ordered = sorted(texts, key=len, reverse=True)
        calls = [ordered[i : i + args.batch] for i in range(0, len(ordered), args.batch)]
        stats: list[Any] = []
        pipelined(
            calls,
            lambda chunk: queue_rolling(loaded, chunk, max_length=args.seq + 1, stride=args.seq, batch_size=args.batch),
            lambda _, results: stats.extend(results),
            in_flight=1,
        )
        return stats

    stats = run()
    if contender in args.profile.split(","):
        common.profile_table(run, torch.device(args.device), args.out, f"ppl-{args.model}-{contender}")
    return sum(s.nll for s in stats), sum(s.tokens for s in stats), run


def ppl_hf(checkpoint: Path, texts: list[str], args: argparse.Namespace) -> tuple[float, int, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=_dtype(args), device_map={"": args.device}).eval()
    batches = []
    for start in range(0, len(texts), args.batch):
        chunk = texts[start : start + args.batch]
        rows = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False).input_ids] for t in chunk]
        width = max(map(len, rows))
        ids = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=args.device)
        labels = torch.tensor([row + [-100] * (width - len(row)) for row in rows], device=args.device)
        batches.append((ids, labels, labels != -100))

    @torch.no_grad()
    def run() -> tuple[float, int]:
        nll, count = 0.0, 0
        for ids, labels, mask in batches:
            scored = int(mask[:, 1:].sum())
            nll += float(model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss) * scored
            count += scored
        return nll, count

    return (*run(), run)


def ppl_lmeval(checkpoint: Path, texts: list[str], args: argparse.Namespace) -> tuple[float, int, Any]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=str(checkpoint),
        batch_size=args.batch,
        dtype=str(_dtype(args)).split(".")[1],
        device=args.device,
        max_length=args.seq + 1,
        add_bos_token=False,
    )  # BOS as its prefix, as ours
    requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]
    count = sum(len(lm.tokenizer(text, add_special_tokens=False).input_ids) for text in texts)  # as ours counts

    def run() -> tuple[float, int]:
        return -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True)), count

    return (*run(), run)


def perplexity(checkpoint: Path, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    texts = texts_of_at_most(AutoTokenizer.from_pretrained(checkpoint), args.texts, args.seq, seed=1)
    device = torch.device(args.device)
    for contender in args.ppl.split(","):
        try:
            with common.peak_memory(device) as memory:
                if contender.startswith("ours"):
                    nll, tokens, run = ppl_ours(checkpoint, texts, args, contender)
                else:
                    nll, tokens, run = {"hf": ppl_hf, "lmeval": ppl_lmeval}[contender](checkpoint, texts, args)
                seconds = common.timed(run, device, args.repeats, warmup=1)
            result = {"tokens_per_s": tokens / seconds, "perplexity": math.exp(nll / tokens), "tokens": tokens}
            result |= memory
        except Exception as error:  # one failing contender must not hide the others' figures
            result = {"error": repr(error)[:500]}
        row = {"what": "perplexity", "contender": contender, "model": args.model, "batch": args.batch}
        common.emit(row | result, args.out)
        _release()


def gen_ours(checkpoint: Path, prompts: list[str], args: argparse.Namespace, contender: str) -> Any:
    from harness.backends.hf_requests import generate
    from harness.core.taskspec import GenerationConfig

    loaded = load_ours(checkpoint, args, contender)
    config = GenerationConfig(max_new_tokens=args.new_tokens)
    return lambda: generate(loaded, prompts, config, chat=False)


def gen_lmeval(checkpoint: Path, prompts: list[str], args: argparse.Namespace) -> Any:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(checkpoint), batch_size=len(prompts), dtype=str(_dtype(args)).split(".")[1],
              device=args.device, max_length=4096)  # fmt: skip
    until = {"until": ["<never-stop>"], "max_gen_toks": args.new_tokens, "do_sample": False}
    requests = [Instance("generate_until", {}, (prompt, until), i) for i, prompt in enumerate(prompts)]
    return lambda: lm.generate_until(requests, disable_tqdm=True)


def generation(checkpoint: Path, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompts = texts_of_at_most(tokenizer, args.prompts, PROMPT_TOKENS, seed=2)
    device = torch.device(args.device)
    for contender in args.gen.split(","):
        try:
            with common.peak_memory(device) as memory:
                run = (
                    gen_ours(checkpoint, prompts, args, contender)
                    if contender.startswith("ours")
                    else gen_lmeval(checkpoint, prompts, args)
                )
                started = time.perf_counter()
                outputs = run()
                first_s = time.perf_counter() - started  # compilation included, for the compiled contender
                seconds = common.timed(run, device, args.repeats, warmup=0)
            new_tokens = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in outputs)
            result = {"tokens_per_s": new_tokens / seconds, "first_call_tokens_per_s": new_tokens / first_s}
            result |= {"new_tokens": new_tokens, **memory}
        except Exception as error:  # one failing contender must not hide the others' figures
            result = {"error": repr(error)[:500]}
        row = {"what": "generation", "contender": contender, "model": args.model, "prompts": len(prompts)}
        common.emit(row | result, args.out)
        _release()


def _dtype(args: argparse.Namespace) -> torch.dtype:
    return torch.bfloat16 if args.device.startswith("cuda") else torch.float32


def _release() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", choices=common.MODELS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", default="auto", choices=["auto", "eager", "sdpa", "flex_attention", "cudnn"])
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--seq", type=int, default=1023, help="scored tokens per text at most (BOS comes on top)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ppl", default="ours,hf,lmeval", help="perplexity contenders ('' for none)")
    parser.add_argument("--gen", default="ours,lmeval", help="generation contenders ('' for none)")
    parser.add_argument("--profile", default="", help="comma list of our perplexity contenders to torch-profile")
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)  # set for child runs
    args = parser.parse_args()
    if args.checkpoint is not None:  # a child: the contenders it was given, rows on stdout
        if args.ppl:
            perplexity(args.checkpoint, args)
        if args.gen:
            generation(args.checkpoint, args)
        return
    common.emit(common.environment(), args.out)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = common.random_checkpoint(args.model, Path(scratch) / "model")
        jobs = [("ppl", c) for c in args.ppl.split(",") if c] + [("gen", c) for c in args.gen.split(",") if c]
        rows = []
        for kind, contender in jobs:
            only = ["--ppl", contender if kind == "ppl" else "", "--gen", contender if kind == "gen" else ""]
            rows += common.run_isolated(__file__, sys.argv[1:], [*only, "--checkpoint", str(checkpoint)])
    summary(rows)


def summary(rows: list[dict[str, Any]]) -> None:
    """Each contender's tokens/s as a ratio to the peer of its kind (HF forward for perplexity, lm-eval for
    generation)."""
    peers = {"perplexity": "hf", "generation": "lmeval"}
    for what, peer_name in peers.items():
        peer = next((r for r in rows if r.get("what") == what and r.get("contender") == peer_name), {})
        for row in rows:
            if row.get("what") == what and "tokens_per_s" in row and peer.get("tokens_per_s"):
                ratio = row["tokens_per_s"] / peer["tokens_per_s"]
                memory = row["peak_gib"] / peer["peak_gib"]
                print(f"{what:>10} {row['contender']:>13}: {row['tokens_per_s']:>9.0f} tok/s {row['peak_gib']:6.2f} GiB"
                      f"  {ratio:.2f}x {peer_name} speed, {memory:.2f}x its memory")  # fmt: skip


if __name__ == "__main__":
    main()
