"""Backends on the embedded Gemma 3 270M on this CPU, in one run: the gguf backend (llama.cpp in process, the
packaged Q4_K_M file) against the transformers backend (the same weights dequantised to float32), and the openai
backend against a local llama.cpp server with 1, 8 and 32 requests in flight, then a cached re-run.

    .venv/bin/python bench/backend_speed.py                       # ~5 min on 2 cores

Generation: `--prompts` prompts, `--new-tokens` greedy tokens each (transformers: one batch); tokens/s counts the
generated tokens re-tokenised, for both alike. Perplexity: `--texts` texts of ~`--words` words, whole-text
windows; tokens/s counts scored tokens; the two backends' perplexities are compared. Multiple choice: `--items`
questions of four choices sharing a long context. Times exclude model loading (each backend is warmed first).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "river",
    "carried",
    "small",
    "boats",
    "past",
    "old",
    "mills",
    "while",
    "children",
    "counted",
    "swans",
    "along",
    "the",
    "quiet",
    "bank",
]


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def texts(count: int, words: int) -> list[str]:
    return [
        " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)).capitalize() + "." for i in range(count)
    ]


def local_backends(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from harness.backends.embedded import embedded_checkpoint_dir
    from harness.backends.gguf import GGUFBackend
    from harness.backends.hf import ModelOptions, load_model
    from harness.backends.hf_backend import HFBackend
    from harness.backends.protocol import Prompt
    from harness.core.taskspec import GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint_dir())
    backends = {
        "transformers": HFBackend(load_model(ModelOptions(device="cpu"))),
        "gguf": GGUFBackend("gemma-3-270m-gguf"),
    }
    prompts = [Prompt(f"Question {i}: what is {i} plus {i + 1}?\nAnswer:") for i in range(args.prompts)]
    config = GenerationConfig(max_new_tokens=args.new_tokens)
    corpus = texts(args.texts, args.words)
    context = " ".join(texts(1, 120))
    pairs = [(f"{context}\nQuestion {i}:", f" choice {c}") for i in range(args.items) for c in "ABCD"]
    figures: dict[str, dict[str, float]] = {}
    for name, backend in backends.items():
        backend.generate(prompts[:1], GenerationConfig(max_new_tokens=2))  # load and warm
        outputs, seconds = timed(lambda b=backend: b.generate(prompts, config))
        generated = sum(len(tokenizer(str(o), add_special_tokens=False).input_ids) for o in outputs)
        stats, ppl_seconds = timed(lambda b=backend: b.loglikelihood_rolling(corpus, 1024, 1024, 8)())
        nll, tokens = sum(s.nll for s in stats), sum(s.tokens for s in stats)
        _, mc_seconds = timed(lambda b=backend: b.loglikelihood(pairs, 8))
        figures[name] = {
            "gen_tok_s": generated / seconds,
            "ppl_tok_s": tokens / ppl_seconds,
            "ppl": math.exp(nll / tokens),
            "mc_items_s": args.items / mc_seconds,
        }
        print(
            f"{name:13s} generation {generated / seconds:7.1f} tok/s ({generated} tokens) | perplexity "
            f"{tokens / ppl_seconds:7.1f} tok/s, ppl {math.exp(nll / tokens):.4f} | multiple choice "
            f"{args.items / mc_seconds:6.2f} items/s",
            flush=True,
        )
    ours, peer = figures["gguf"], figures["transformers"]
    print(
        f"gguf / transformers: generation {ours['gen_tok_s'] / peer['gen_tok_s']:.2f}x, perplexity "
        f"{ours['ppl_tok_s'] / peer['ppl_tok_s']:.2f}x, multiple choice {ours['mc_items_s'] / peer['mc_items_s']:.2f}x;"
        f" perplexity relative difference {abs(ours['ppl'] - peer['ppl']) / peer['ppl']:.2e}"
    )


def served_backend(args: argparse.Namespace) -> None:
    from harness.backends.api_client import Endpoint
    from harness.backends.embedded import embedded_gguf_path
    from harness.backends.llama_server import serve_gguf
    from harness.backends.openai_backend import OpenAIBackend
    from harness.core.cache import ResultCache
    from harness.core.taskspec import TaskSpec
    from harness.evaluation.runner import RunOptions, evaluate, prepare_tasks

    with tempfile.TemporaryDirectory() as folder:
        rows = Path(folder) / "rows.jsonl"
        rows.write_text("".join(f'{{"q": "What is {i} plus {i}?", "a": ["{2 * i}"]}}\n' for i in range(args.requests)))
        spec = TaskSpec.model_validate(
            {
                "name": "sums",
                "kind": "generate",
                "data": str(rows),
                "template": "Q: {{ q }}\nA:",
                "reference_field": "a",
                "metrics": ["exact_match"],
                "generation": {"max_new_tokens": args.new_tokens},
            }
        )
        prepared = prepare_tasks([spec], None)
        with serve_gguf(embedded_gguf_path(), "gemma", Path(folder) / "server.log", n_ctx=2048) as server:
            seconds_at = {}
            for concurrency in (1, 8, 32):
                backend = OpenAIBackend(Endpoint(model="gemma", base_url=server.base_url, concurrency=concurrency))
                backend.unsupported(spec)
                run, seconds = timed(lambda b=backend: evaluate(b, prepared, ResultCache(None), RunOptions()))
                seconds_at[concurrency] = seconds
                print(
                    f"openai backend, {concurrency:2d} in flight: {args.requests} requests in {seconds:6.1f} s "
                    f"({args.requests / seconds:.2f}/s), errors {run.tasks['sums'].n_errors}",
                    flush=True,
                )
            cache = ResultCache(Path(folder) / "cache.sqlite")
            evaluate(backend, prepared, cache, RunOptions())
            again, seconds = timed(lambda: evaluate(backend, prepared, cache, RunOptions()))
            made = again.tasks["sums"].n_samples - again.tasks["sums"].n_cached
            print(f"cached re-run: {made} requests made, {seconds:.2f} s")
            speedups = {n: seconds_at[1] / seconds_at[n] for n in (8, 32)}
            print(f"8 vs 1 in flight: {speedups[8]:.2f}x; 32 vs 1: {speedups[32]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--skip-served", action="store_true")
    args = parser.parse_args()
    local_backends(args)
    if not args.skip_served:
        served_backend(args)


if __name__ == "__main__":
    main()
