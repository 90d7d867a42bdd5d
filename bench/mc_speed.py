"""Multiple-choice scoring speed: our continuation log-likelihoods against lm-evaluation-harness 0.4.13 (HF backend,
`HFLM.loglikelihood`) on a HellaSwag-shaped set, same model and requests, in one run, each contender in its own
process (random-init models from real configs; see bench/common.py).

    python3 bench/mc_speed.py --model gemma-3-270m --contenders ours-auto,ours-sdpa,lmeval
    python3 bench/mc_speed.py --model gemma-2-2b-shape --contenders ours-auto,ours-sdpa,lmeval,lmeval-eager
    python3 bench/mc_speed.py --device cpu --items 8 --layers 2 --repeats 1   # smoke test on a 2-core CPU

On a lent GPU (no network; bench/notes/mc-speed.md): wheels for lm-eval 0.4.13, pydantic (+ pydantic-core,
annotated-types, typing-inspection, typing-extensions >= 4.16) and nvidia-cudnn-frontend 1.22.1 carried in `.whl`,
installed with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and PYTHONPATH=/tmp/site; the
tokenizer in `.carry/tokenizer` (bench/export_tokenizer.py). Add `--out FILE --scores-out FILE` to keep the rows
and every request's scores. `--profile` runs two more calls under the torch profiler: at 1,000 items that takes
minutes per contender (2026-12-05: one call ran past a 7-minute limit), so profile with `--items 200`.

Data: `--items` items, each a context of 60-100 tokens and 4 endings of 20-30 tokens (decoded random ids, trimmed
until they re-encode within their length), a random gold ending; every ending becomes one (context, " " + ending)
request, lm-eval's target delimiter, so a 4-choice item is 4 requests sharing one context.
Contenders, all given every request in one call with `--batch`:
  ours-auto     harness.backends.hf_loglikelihood.loglikelihood on a LoadedModel with `attention: auto` (cudnn on a
                GPU with the cuDNN frontend: one causal row per request, no packing)
  ours-sdpa     ... with `attention: sdpa`: the 4 requests of an item packed into one row behind a block mask
                (Gemma 2: transformers 5.17 runs sdpa without the attention soft-cap; 5.24 refuses sdpa)
  lmeval        HFLM(pretrained=checkpoint, dtype=bfloat16, add_bos_token=True), transformers' default attention
  lmeval-eager  ... with attn_implementation="eager" (the one transformers path that soft-caps Gemma 2's attention)
`--batch` counts rows for ours (an item's packed row, or a request's) and requests for lm-eval. Speed: items/s over
the median of `--repeats` calls after a first call (the warm-up: cuDNN graphs, compilation), tokenising included on
both sides. Memory: the allocator's peak from model load to the last call. Agreement, each contender against the
peer (`--peer`): per item argmax of the summed log-probabilities (acc), and each request's relative difference
|ours - peer| / max(|peer|, 1e-2), as bench/mc_parity.py measures it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

CHOICES = 4
CONTEXT_TOKENS = (60, 100)
ENDING_TOKENS = (20, 30)
REL_FLOOR = 1e-2


@dataclass(frozen=True)
class Item:
    context: str
    endings: list[str]
    gold: int


def text_within(tokenizer: Any, ids: list[int], tokens: int) -> str:
    """`ids` decoded, trimmed until the text re-encodes to at most `tokens` ids, outer whitespace stripped."""
    text = tokenizer.decode(ids[:tokens]).strip()
    while len(again := tokenizer(text, add_special_tokens=False).input_ids) > tokens:
        text = tokenizer.decode(again[:tokens]).strip()
    return text


def hellaswag_shaped(tokenizer: Any, count: int, seed: int = 3) -> list[Item]:
    """`count` items of one context and CHOICES endings of random lengths within the ranges above, seeded."""
    lengths = random.Random(seed)
    width = CONTEXT_TOKENS[1] + CHOICES * ENDING_TOKENS[1]
    items = []
    for row in common.random_ids(count, width, seed).tolist():
        context = text_within(tokenizer, row, lengths.randint(*CONTEXT_TOKENS))
        starts = range(CONTEXT_TOKENS[1], width, ENDING_TOKENS[1])
        endings = [text_within(tokenizer, row[s:], lengths.randint(*ENDING_TOKENS)) for s in starts]
        items.append(Item(context, endings, lengths.randrange(CHOICES)))
    return items


def requests_of(items: list[Item]) -> list[tuple[str, str]]:
    return [(item.context, " " + ending) for item in items for ending in item.endings]


Scorer = Callable[[], list[tuple[float, bool]]]  # each request's (log-probability, greedy)


def ours(
    checkpoint: Path, pairs: list[tuple[str, str]], args: argparse.Namespace, attention: str
) -> tuple[Scorer, str]:
    from harness.backends.hf import ModelOptions, load_model
    from harness.backends.hf_loglikelihood import loglikelihood

    loaded = load_model(ModelOptions(name=str(checkpoint), device=args.device, attention=attention))
    loaded.model  # noqa: B018 - load the weights before the first call
    run: Scorer = lambda: [(s.logprob, s.greedy) for s in loglikelihood(loaded, pairs, args.batch)]  # noqa: E731
    return run, loaded.model.config._attn_implementation


def lmeval(
    checkpoint: Path, pairs: list[tuple[str, str]], args: argparse.Namespace, attention: str
) -> tuple[Scorer, str]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    kwargs = {"attn_implementation": attention} if attention != "default" else {}
    lm = HFLM(pretrained=str(checkpoint), batch_size=args.batch, dtype=dtype, device=args.device,
              add_bos_token=True, **kwargs)  # fmt: skip  # BOS once, as in bench/lmeval_loglikelihood.py
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    run: Scorer = lambda: [(float(lp), bool(g)) for lp, g in lm.loglikelihood(requests, disable_tqdm=True)]  # noqa: E731
    return run, lm.model.config._attn_implementation


def contender_scorer(
    checkpoint: Path, pairs: list[tuple[str, str]], args: argparse.Namespace, name: str
) -> tuple[Scorer, str]:
    """The contender's scoring call (weights loaded) and the attention implementation its model runs."""
    side, _, attention = name.partition("-")
    if side == "ours":
        return ours(checkpoint, pairs, args, attention or "auto")
    return lmeval(checkpoint, pairs, args, attention or "default")


def measure(checkpoint: Path, items: list[Item], args: argparse.Namespace, name: str) -> dict[str, Any]:
    """One contender's speed and memory; its scores go to `args.scores` as JSON."""
    pairs = requests_of(items)
    device = torch.device(args.device)
    with common.peak_memory(device) as memory:
        run, implementation = contender_scorer(checkpoint, pairs, args, name)
        started = time.perf_counter()
        scores = run()
        common.synchronize(device)
        first_s = time.perf_counter() - started
        every: list[float] = []
        seconds = common.timed(run, device, args.repeats, warmup=0, every=every)
    if name in args.profile.split(","):
        common.profile_table(run, device, args.out, f"mc-{args.model}-{name}-b{args.batch}")
    args.scores.write_text(json.dumps({"logprob": [s[0] for s in scores], "greedy": [s[1] for s in scores]}))
    speed = {"items_per_s": len(items) / seconds, "requests_per_s": len(pairs) / seconds, "seconds": seconds}
    return speed | {"every_s": [round(s, 4) for s in every], "first_call_s": first_s,
                    "implementation": implementation, **memory}  # fmt: skip


def agreement(items: list[Item], scores: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Per item argmax (acc) and per request log-probability differences of one contender against the peer."""
    ours_lp, peer_lp = np.array(scores["logprob"]), np.array(peer["logprob"])
    gold = np.array([item.gold for item in items])
    ours_pick = ours_lp.reshape(-1, CHOICES).argmax(1)  # np.argmax: the first index on ties, as lm-eval
    peer_pick = peer_lp.reshape(-1, CHOICES).argmax(1)
    differ = np.flatnonzero(ours_pick != peer_pick)
    # lm-eval sums bf16 log-probabilities into a bf16 scalar (steps of 2 nats past 256): its top choices can tie,
    # and np.argmax then takes the first.
    peer_ties = (peer_lp.reshape(-1, CHOICES) == peer_lp.reshape(-1, CHOICES).max(1, keepdims=True)).sum(1) > 1
    top2 = np.sort(ours_lp.reshape(-1, CHOICES), axis=1)[:, -2:]
    gaps = top2[differ, 1] - top2[differ, 0]  # how close our top two were where the picks differ
    absolute = np.abs(ours_lp - peer_lp)
    return {
        "acc": float((ours_pick == gold).mean()),
        "acc_peer": float((peer_pick == gold).mean()),
        "argmax_differs": int(differ.size),
        "argmax_differs_where_peer_ties": int(peer_ties[differ].sum()),
        "peer_tied_items": int(peer_ties.sum()),
        "differing_items_top2_gap_max": float(gaps.max()) if gaps.size else 0.0,
        "max_rel_diff": float((absolute / np.maximum(np.abs(peer_lp), REL_FLOOR)).max()),
        "max_abs_diff": float(absolute.max()),
        "median_abs_diff": float(np.median(absolute)),
        "mean_diff": float((ours_lp - peer_lp).mean()),
        "greedy_differs": int((np.array(scores["greedy"]) != np.array(peer["greedy"])).sum()),
    }


def data_shape(tokenizer: Any, items: list[Item]) -> dict[str, Any]:
    """Mean token counts of the contexts and endings as scored (BOS and the leading space included)."""
    from harness.backends.hf_loglikelihood import encode_pairs

    encoded = encode_pairs(tokenizer, requests_of(items))
    return {
        "what": "mc-data",
        "items": len(items),
        "requests": len(encoded),
        "context_tokens_mean": float(np.mean([len(c) for c, _ in encoded[::CHOICES]])),
        "ending_tokens_mean": float(np.mean([len(x) for _, x in encoded])),
        "ending_tokens_range": [min(len(x) for _, x in encoded), max(len(x) for _, x in encoded)],
    }


def summary(rows: dict[str, dict[str, Any]], peer_name: str) -> None:
    peer = rows.get(peer_name, {})
    for name, row in rows.items():
        if "items_per_s" not in row:
            print(f"{name:>13}: {row.get('error', 'no result')}")
            continue
        line = f"{name:>13}: {row['items_per_s']:>8.1f} items/s {row['peak_gib']:6.2f} GiB"
        if peer.get("items_per_s"):
            line += f"  {row['items_per_s'] / peer['items_per_s']:5.2f}x {peer_name} speed,"
            line += f" {row['peak_gib'] / peer['peak_gib']:.2f}x its memory"
        if "argmax_differs" in row:
            line += f"; argmax differs on {row['argmax_differs']} items, max rel diff {row['max_rel_diff']:.2e}"
        print(line, flush=True)


def parent(args: argparse.Namespace, scratch: Path) -> None:
    from transformers import AutoTokenizer

    common.emit(common.environment(), args.out)
    checkpoint = common.random_checkpoint(args.model, scratch / "model", layers=args.layers)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    items = hellaswag_shaped(tokenizer, args.items)
    shape = {"model": args.model, "batch": args.batch}
    common.emit(data_shape(tokenizer, items) | shape, args.out)
    rows, scores = {}, {}
    for name in args.contenders.split(","):
        path = scratch / f"{name}.json"
        overrides = ["--contenders", name, "--checkpoint", str(checkpoint), "--scores", str(path)]
        rows[name] = common.run_isolated(__file__, sys.argv[1:], overrides)[-1]
        if path.exists():
            scores[name] = json.loads(path.read_text())
    for name in scores:
        if name != args.peer and args.peer in scores:
            agreed = agreement(items, scores[name], scores[args.peer])
            rows[name] |= agreed
            # The differences as text: emit rounds floats to 4 decimals, which would zero them.
            exact = {key: f"{value:.3e}" if key.endswith("_diff") else value for key, value in agreed.items()}
            common.emit({"what": "mc-agreement", "contender": name, "peer": args.peer, **shape, **exact}, args.out)
    if args.scores_out is not None:
        args.scores_out.write_text(json.dumps({"gold": [item.gold for item in items], **scores}))
    summary(rows, args.peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", choices=common.MODELS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--contenders", default="ours-auto,ours-sdpa,lmeval")
    parser.add_argument("--peer", default="lmeval", help="the contender the others are compared with")
    parser.add_argument("--profile", default="", help="comma list of contenders to torch-profile (2 calls)")
    parser.add_argument("--layers", type=int, default=None, help="only the last N decoder layers (smoke tests)")
    parser.add_argument("--out", type=Path, default=None, help="append JSON rows here")
    parser.add_argument("--scores-out", type=Path, default=None, help="write every contender's scores here")
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)  # set for child runs
    parser.add_argument("--scores", type=Path, default=None, help=argparse.SUPPRESS)  # the child's scores file
    args = parser.parse_args()
    if args.checkpoint is None:
        with tempfile.TemporaryDirectory() as scratch:
            parent(args, Path(scratch))
        return
    (name,) = args.contenders.split(",")
    from transformers import AutoTokenizer

    items = hellaswag_shaped(AutoTokenizer.from_pretrained(args.checkpoint), args.items)
    try:
        result = measure(args.checkpoint, items, args, name)
    except Exception as error:  # reported as a row: one failing contender must not hide the others
        result = {"error": repr(error)[:500]}
    row = {"what": "mc", "contender": name, "model": args.model, "batch": args.batch, "items": args.items}
    common.emit(row | result, args.out)


if __name__ == "__main__":
    main()
