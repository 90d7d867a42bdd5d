"""What the speed benches share: random-init models from real configs, timing, peak memory, result rows.

Speed and memory do not depend on the weights' values, so a model built from the real config with random
weights stands in for the trained one (the 250 MB embedded model does not travel to a lent GPU).
"""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).parent / "configs"
# Gemma 3's tokenizer, exported from the embedded model by bench/export_tokenizer.py (ignored by git: 33 MB).
TOKENIZER = Path(__file__).resolve().parent.parent / ".carry" / "tokenizer"
MODELS = ("gemma-3-270m", "gemma-2-2b-shape")
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python bench/x.py`: import the project from this checkout
    sys.path.insert(0, str(REPO_ROOT))


def random_checkpoint(
    name: str, folder: Path, layers: int | None = None, vocab: int | None = None, tokenizer: bool = True
) -> Path:
    """A checkpoint folder (bf16 weights, seeded random init, the Gemma 3 tokenizer) built from a real config;
    `layers`: only the last that many decoder layers (Gemma's layer pattern ends on a full-attention layer);
    `vocab`: a smaller vocabulary, for work that leaves the LM head out; `tokenizer`: whether to add it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").exists():
        return folder
    config = AutoConfig.from_pretrained(CONFIGS / f"{name}.json")
    if layers is not None:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[-layers:]
    if vocab is not None:
        config.vocab_size = vocab
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    if tokenizer:
        AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(folder)
    return folder


def tokenizer_dir() -> Path:
    """The Gemma 3 tokenizer folder, unpacked from its xz copy where only that travelled."""
    if (TOKENIZER / "tokenizer.json").exists():
        return TOKENIZER
    packed = TOKENIZER / "tokenizer.json.xz"
    if not packed.exists():
        raise SystemExit(f"{packed} is missing: run `python bench/export_tokenizer.py` on a machine with the model")
    target = Path("/tmp/bench-tokenizer")
    target.mkdir(exist_ok=True)
    with lzma.open(packed) as source, (target / "tokenizer.json").open("wb") as sink:
        shutil.copyfileobj(source, sink)
    for extra in TOKENIZER.glob("*.json"):
        shutil.copy(extra, target)
    return target


def random_ids(rows: int, length: int, seed: int = 0, high: int = 200_000) -> torch.Tensor:
    """Token ids drawn away from the special tokens, seeded so that every contender gets the same data."""
    return torch.randint(10, high, (rows, length), generator=torch.Generator().manual_seed(seed))


def training_rows(rows: int, length: int, seed: int = 0, high: int = 200_000) -> list[list[Any]]:
    """`random_ids` as training rows of one example each, every position but the first supervised."""
    from adapters.tokenize import IGNORE_INDEX, TokenizedExample

    ids = random_ids(rows, length, seed, high).tolist()
    return [[TokenizedExample(row, [IGNORE_INDEX, *row[1:]], 0)] for row in ids]


def random_lora_b(model: Any, std: float = 0.02, seed: int = 1) -> None:
    """peft starts LoRA's B at zero, which leaves A without a gradient: draw B at random (seeded) instead."""
    torch.manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(std=std)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def peak_memory(device: torch.device, history: Path | None = None) -> Iterator[dict[str, float]]:
    """Yields a dict that holds `peak_gib` once the block ends: allocator peak on a GPU, max RSS growth on a CPU.

    A reset of the peak inside the block by code under measurement (through torch.cuda's
    reset_peak_memory_stats, looked up when called) is counted in `peak_resets` and the peak before it kept.
    `history` (GPU): where to write a report of what was allocated at the peak (bench/memory_peak.py)."""
    result: dict[str, float] = {}
    if device.type != "cuda":
        import resource

        yield result
        result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # whole process, KiB -> GiB
        return
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    if history is not None:
        torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    peaks: list[int] = []
    reset = torch.cuda.memory.reset_peak_memory_stats

    def keeping_the_peak(*args: Any, **kwargs: Any) -> None:
        peaks.append(torch.cuda.max_memory_allocated(device))
        reset(*args, **kwargs)

    torch.cuda.reset_peak_memory_stats = torch.cuda.memory.reset_peak_memory_stats = keeping_the_peak
    try:
        yield result
    finally:
        torch.cuda.reset_peak_memory_stats = torch.cuda.memory.reset_peak_memory_stats = reset
    result["peak_gib"] = max([*peaks, torch.cuda.max_memory_allocated(device)]) / 2**30
    result["peak_resets"] = len(peaks)
    if history is not None:
        from memory_peak import report

        history.write_text(report(torch.cuda.memory._snapshot()))
        torch.cuda.memory._record_memory_history(enabled=None)


def timed(
    fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2, every: list[float] | None = None
) -> float:
    """Median seconds per call after `warmup` calls (each call's appended to `every` where given)."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    if every is not None:
        every.extend(seconds)
    return sorted(seconds)[len(seconds) // 2]


def captured(fn: Callable[[], Any], calls: int = 1) -> torch.cuda.CUDAGraph:
    """`fn` called `calls` times, captured as one CUDA graph after a warm-up call on a side stream."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    return graph


def emit(row: dict[str, Any], out: Path | None) -> None:
    """Print one JSON result row (and append it to `out`)."""
    line = json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()})
    print(line, flush=True)
    if out is not None:
        with out.open("a") as handle:
            handle.write(line + "\n")


def environment() -> dict[str, Any]:
    import transformers

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"what": "environment", "device": gpu, "torch": torch.__version__, "transformers": transformers.__version__}


def profile_table(fn: Callable[[], Any], device: torch.device, out: Path | None, label: str, rows: int = 30) -> None:
    """Torch-profile two calls of `fn`; print the top operators by device (or CPU) time, save the full table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        synchronize(device)
        started = time.perf_counter()
        for _ in range(2):
            fn()
        synchronize(device)
        wall = time.perf_counter() - started
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    idle = f"\n{wall * 1e3:.1f} ms for the 2 calls"
    if device.type == "cuda":
        idle += f"; {device_idle(profiler.events())}"
    table = profiler.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)
    print(f"--- profile: {label} (2 calls) ---\n{table}{idle}", flush=True)
    if out is not None:
        full = profiler.key_averages().table(sort_by=sort, row_limit=200)
        (out.parent / f"profile-{label}.txt").write_text(full + idle)


def device_idle(events: Any) -> str:
    """How long the device ran kernels against the span from the first to the last: the time between kernels
    (launch gaps, a graph's node gaps, the host's work the device waited for)."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA)
    busy, reach = 0.0, float("-inf")
    for start, end in spans:  # the union of the intervals (annotations overlap the kernels they hold)
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    span = spans[-1][1] - spans[0][0] if spans else 0.0
    return f"device busy {busy / 1e3:.1f} ms of a {span / 1e3:.1f} ms span ({len(spans)} device events)"


def run_isolated(script: str, argv: list[str], overrides: list[str]) -> list[dict[str, Any]]:
    """Run `script` again in a fresh process with `overrides` after `argv` (no compiled graphs, allocator state or
    CUDA context carried from one contender to the next); echo its output and return its JSON result rows."""
    child = subprocess.run([sys.executable, script, *argv, *overrides], stdout=subprocess.PIPE, text=True, check=False)
    for line in child.stdout.splitlines():
        print(line, flush=True)
    rows = [json.loads(line) for line in child.stdout.splitlines() if line.startswith('{"')]  # not TRL's dict
    return [row for row in rows if row.get("what") != "environment"] or [{"error": f"exit status {child.returncode}"}]
