"""Multiple-choice parity: our log-likelihood scoring against lm-evaluation-harness 0.4.13 (embedded Gemma 3 270M).

Every item of the data file ({"id", "context", "choices", "gold"}, prompts built as lm-eval's tasks build them)
becomes one (context, " " + choice) request per choice, lm-eval's default target delimiter. Both sides score the
same requests on CPU in float32 with the same checkpoint folder (the embedded model's, `loaded.checkpoint`):

- ours: `harness.backends.hf_loglikelihood.loglikelihood` (shared contexts packed into one row), in this process;
- lm-eval: `bench/lmeval_loglikelihood.py` (`HFLM.loglikelihood`) in its own virtual environment, as a subprocess
  (the interpreter from $LMEVAL_PYTHON, default /work/lmeval-venv/bin/python). It runs first, before our weights
  load, so that only one model is in memory and computing at a time.

Compared: each choice's summed log-probability (max absolute and relative difference), the is_greedy flags, and
per item `acc` and `acc_norm`: ours from `harness.metrics.choice`, lm-eval's with its own formulas
(lm_eval/api/task.py: np.argmax(lls) and np.argmax(lls / len(choice)), the first index on ties).

Expected difference: ours is lower by about 2e-5 nats per continuation token (2026-12-04: at most 3.6e-4 nats on a
14-token choice), always in that direction. It is lm-eval's side: torch's CPU float32 `log_softmax` over Gemma's
262k-token vocabulary puts every log-probability about 2e-5 too high against a float64 log-softmax of the same
logits, while ours (target logit less `logsumexp`) is within about 1e-6 per token of it.

Tolerance: relative difference |ours - ref| / max(|ref|, 1e-2) <= 1e-4 for every choice (the 1e-2 floor keeps a
near-zero log-probability from turning float32 noise into a large ratio), and no item's acc or acc_norm may
differ. Exit status 1 if either fails (is_greedy disagreements are reported, not failed on: a near-tie of two
tokens' logits can flip under float32 noise), 2 if the lm-eval interpreter is missing.

Times: ours is the `loglikelihood` call alone (tokenising and forwards; weights already loaded), with the load
(fingerprints, weights, tokenizer) reported apart; lm-eval's is the subprocess's wall time (interpreter start,
imports, model load and scoring), with the script's own figure (model load and scoring, no imports) beside it.

    .venv/bin/python bench/mc_parity.py [--data bench/data/mc_parity.jsonl] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python bench/mc_parity.py`: import the project from this checkout
    sys.path.insert(0, str(REPO_ROOT))

from harness.backends.hf import ModelOptions, load_model  # noqa: E402
from harness.backends.hf_loglikelihood import loglikelihood  # noqa: E402
from harness.core.registry import ChoiceStats  # noqa: E402
from harness.metrics.choice import acc, acc_norm  # noqa: E402

DATA = REPO_ROOT / "bench" / "data" / "mc_parity.jsonl"
LMEVAL_SCRIPT = REPO_ROOT / "bench" / "lmeval_loglikelihood.py"
DEFAULT_LMEVAL_PYTHON = "/work/lmeval-venv/bin/python"
REL_TOLERANCE = 1e-4
REL_FLOOR = 1e-2


@dataclass(frozen=True)
class Item:
    id: str
    context: str
    choices: list[str]
    gold: int


@dataclass(frozen=True)
class Side:
    """One side's per-choice scores (flattened in item order) and how long it took."""

    logprob: list[float]
    greedy: list[bool]
    seconds: float
    note: str


def read_items(path: Path) -> list[Item]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Item(r["id"], r["context"], list(r["choices"]), int(r["gold"])) for r in rows]


def requests(items: list[Item]) -> list[tuple[str, str]]:
    return [(item.context, " " + choice) for item in items for choice in item.choices]


def run_lmeval(python: str, checkpoint: Path, pairs: list[tuple[str, str]], batch_size: int) -> Side:
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "requests.jsonl", Path(tmp) / "lmeval.jsonl"
        lines = (json.dumps({"context": c, "continuation": x}, ensure_ascii=False) + "\n" for c, x in pairs)
        inp.write_text("".join(lines), encoding="utf-8")
        command = [python, str(LMEVAL_SCRIPT), "--model", str(checkpoint), "--requests", str(inp), "--out", str(out)]
        start = time.perf_counter()
        done = subprocess.run([*command, "--batch-size", str(batch_size)], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"lm-eval reference failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    own = re.search(r"scored in ([\d.]+)s", done.stdout)
    note = f"subprocess wall; script's own load+score {own.group(1)} s" if own else "subprocess wall"
    return Side([float(r["logprob"]) for r in rows], [bool(r["is_greedy"]) for r in rows], seconds, note)


Metrics = list[tuple[float, float]]


def item_metrics(items: list[Item], logprob: list[float], greedy: list[bool], lmeval: bool) -> Metrics:
    """(acc, acc_norm) per item: ours from harness.metrics.choice, or lm-eval's formulas with numpy."""
    result: Metrics = []
    at = 0
    for item in items:
        lls, flags = logprob[at : at + len(item.choices)], greedy[at : at + len(item.choices)]
        at += len(item.choices)
        if lmeval:
            lengths = np.array([float(len(choice)) for choice in item.choices])
            pred, pred_norm = np.argmax(lls), np.argmax(np.array(lls) / lengths)
            result.append((float(pred == item.gold), float(pred_norm == item.gold)))
        else:
            stats = [ChoiceStats(lp, 0, len(c), g) for lp, c, g in zip(lls, item.choices, flags, strict=True)]
            result.append((acc(stats, [item.gold]), acc_norm(stats, [item.gold])))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    python = os.environ.get("LMEVAL_PYTHON", DEFAULT_LMEVAL_PYTHON)
    if not Path(python).is_file():
        print(f"lm-eval interpreter not found: {python} (set LMEVAL_PYTHON; see bench/lmeval_loglikelihood.py)")
        return 2

    items = read_items(args.data)
    pairs = requests(items)
    start = time.perf_counter()
    loaded = load_model(ModelOptions(dtype="float32", device="cpu"))  # weights load lazily, after lm-eval's run
    fingerprint_s = time.perf_counter() - start
    ref = run_lmeval(python, loaded.checkpoint, pairs, args.batch_size)

    start = time.perf_counter()
    _ = loaded.model, loaded.tokenizer
    load_s = fingerprint_s + time.perf_counter() - start
    start = time.perf_counter()
    scores = loglikelihood(loaded, pairs, args.batch_size)
    ours = Side([s.logprob for s in scores], [s.greedy for s in scores], time.perf_counter() - start, "")

    absolute = [abs(a - b) for a, b in zip(ours.logprob, ref.logprob, strict=True)]
    relative = [d / max(abs(b), REL_FLOOR) for d, b in zip(absolute, ref.logprob, strict=True)]
    worst = int(np.argmax(relative))
    greedy_diff = sum(a != b for a, b in zip(ours.greedy, ref.greedy, strict=True))
    ours_m = item_metrics(items, ours.logprob, ours.greedy, lmeval=False)
    ref_m = item_metrics(items, ref.logprob, ref.greedy, lmeval=True)
    differ = [sum(a[k] != b[k] for a, b in zip(ours_m, ref_m, strict=True)) for k in (0, 1)]

    def mean(rows: Metrics, k: int) -> float:
        return sum(r[k] for r in rows) / len(rows)

    print(f"checkpoint: {loaded.checkpoint}")
    print(f"items: {len(items)}, choices: {len(pairs)}, batch size {args.batch_size}, CPU float32")
    print(f"max |ours - lm-eval| logprob: {max(absolute):.3e} nats")
    print(f"max relative diff (/max(|ref|, {REL_FLOOR:g})): {relative[worst]:.3e} at {pairs[worst]!r}")
    greedy_counts = f"greedy: ours {sum(ours.greedy)}, lm-eval {sum(ref.greedy)}"
    print(f"is_greedy disagreements: {greedy_diff} / {len(pairs)} ({greedy_counts})")
    print(f"{'metric':<10}{'ours':>10}{'lm-eval':>10}{'items differ':>14}")
    for k, name in enumerate(("acc", "acc_norm")):
        print(f"{name:<10}{mean(ours_m, k):>10.4f}{mean(ref_m, k):>10.4f}{differ[k]:>14}")
    print(f"ours:    {ours.seconds:.2f} s (loglikelihood call only; load {load_s:.2f} s apart)")
    print(f"lm-eval: {ref.seconds:.2f} s ({ref.note})")

    failed = relative[worst] > REL_TOLERANCE or any(differ)
    print("FAIL" if failed else f"PASS (relative tolerance {REL_TOLERANCE:g}, no acc/acc_norm item differs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
