"""Reference log-likelihoods from lm-evaluation-harness (lm-eval 0.4.13, HF backend) for parity checks.

Scores JSONL requests with `HFLM.loglikelihood` (or `HFLM.loglikelihood_rolling` with --rolling) on CPU in
float32, exactly as lm-eval's own tasks would, and writes one JSON line per request in input order:

    in:  {"context": str, "continuation": str}    out: {"logprob": float, "is_greedy": bool}
    in:  {"text": str}            (--rolling)     out: {"logprob": float}

    /work/lmeval-venv/bin/python bench/lmeval_loglikelihood.py --model CHECKPOINT_DIR \\
        --requests IN.jsonl --out OUT.jsonl [--batch-size N] [--rolling] [--max-length N]

It runs in its own virtual environment (it imports nothing from `harness`):

    python3 -m venv /work/lmeval-venv
    /work/lmeval-venv/bin/pip install torch==2.13.0          # first: the CPU build
    /work/lmeval-venv/bin/pip install "lm-eval[hf]==0.4.13" torch==2.13.0   # brings transformers, accelerate, peft

BOS appears exactly once at the start of every scored sequence:
- loglikelihood: add_bos_token=True, so `tok_encode` passes add_special_tokens=True and the context (encoded alone
  and together with the continuation in `TemplateLM._encode_pair`) starts with one BOS; an empty context becomes
  [prefix_token_id] = [BOS] with the continuation encoded without special tokens.
- rolling: add_bos_token=False, since `get_rolling_token_windows` itself prepends prefix_token_id (= BOS) to the
  first window; with the tokenizer's default (BOS added) the window would be [BOS, BOS, ...] and the second BOS
  would be scored as a predicted token.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _instances(rows: list[dict[str, Any]], rolling: bool) -> list[Instance]:
    if rolling:
        return [
            Instance(request_type="loglikelihood_rolling", doc=row, arguments=(row["text"],), idx=i)
            for i, row in enumerate(rows)
        ]
    return [
        Instance(request_type="loglikelihood", doc=row, arguments=(row["context"], row["continuation"]), idx=i)
        for i, row in enumerate(rows)
    ]


def score(
    model: str, rows: list[dict[str, Any]], rolling: bool, batch_size: int = 8, max_length: int | None = None
) -> list[dict[str, Any]]:
    """lm-eval's log-likelihood of each request, in input order."""
    lm = HFLM(
        pretrained=model,
        dtype="float32",
        device="cpu",
        batch_size=batch_size,
        max_length=max_length,
        add_bos_token=not rolling,  # see the module docstring: BOS exactly once either way
    )
    requests = _instances(rows, rolling)
    if rolling:
        return [{"logprob": float(lp)} for lp in lm.loglikelihood_rolling(requests, disable_tqdm=True)]
    return [{"logprob": float(lp), "is_greedy": bool(g)} for lp, g in lm.loglikelihood(requests, disable_tqdm=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF checkpoint folder")
    parser.add_argument("--requests", type=Path, required=True, help="input JSONL")
    parser.add_argument("--out", type=Path, required=True, help="output JSONL")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rolling", action="store_true", help='score whole {"text": ...} lines (perplexity)')
    parser.add_argument("--max-length", type=int, default=None, help="rolling window length (default: lm-eval's)")
    args = parser.parse_args(argv)

    rows = _read_jsonl(args.requests)
    start = time.perf_counter()
    results = score(args.model, rows, args.rolling, args.batch_size, args.max_length)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    print(f"{len(results)} requests scored in {time.perf_counter() - start:.1f}s (model load included) -> {args.out}")


if __name__ == "__main__":
    main()
