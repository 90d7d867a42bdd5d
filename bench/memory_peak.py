"""What is allocated at the allocator's peak, read from a `torch.cuda.memory` snapshot with its trace.

bench/common.py's `peak_memory(device, history=...)` records the allocator's history and writes this report:
the trace is replayed (allocations up, completed frees down) to the peak, and the blocks alive there are summed
by where they were allocated (the innermost frame outside torch, and the innermost frame of this project).

    python bench/memory_peak.py snapshot.pickle     # a snapshot dumped by torch.cuda.memory._dump_snapshot
"""

from __future__ import annotations

import linecache
import pickle
import sys
from collections import defaultdict
from typing import Any

PROJECT = ("/adapters/", "/harness/", "/bench/")


def _where(frames: list[dict[str, Any]]) -> str:
    """`file:line function` of the innermost frame outside torch, then of the innermost project frame."""

    def short(frame: dict[str, Any]) -> str:
        return f"{'/'.join(frame['filename'].split('/')[-2:])}:{frame['line']} {frame['name']}"

    outside = [f for f in frames if "/torch/" not in f["filename"] and not f["filename"].startswith("<")]
    ours = [f for f in frames if any(part in f["filename"] for part in PROJECT)]
    compiled = [f for f in frames if "torchinductor" in f["filename"]]
    labels = [short(outside[0]) if outside else "(torch)"]
    if ours and (not outside or ours[0] is not outside[0]):
        labels.append(short(ours[0]))
    if compiled:  # the generated code's line (its buffer's shape), readable while the compile cache exists
        source = linecache.getline(compiled[0]["filename"], compiled[0]["line"]).strip()
        labels.insert(0, f"[compiled: {source[:90]}]")
    return " <- ".join(labels)


def report(snapshot: dict[str, Any], top: int = 25) -> str:
    trace = [entry for device in snapshot["device_traces"] for entry in device]
    sizes = {"alloc": 1, "free_completed": -1}
    current = peak = peak_at = 0
    for index, entry in enumerate(trace):
        current += sizes.get(entry["action"], 0) * entry["size"]
        if current > peak:
            peak, peak_at = current, index
    live: dict[int, dict[str, Any]] = {}
    for entry in trace[: peak_at + 1]:
        if entry["action"] == "alloc":
            live[entry["addr"]] = entry
        elif entry["action"] == "free_completed":
            live.pop(entry["addr"], None)
    groups: dict[str, list[int]] = defaultdict(list)
    for entry in live.values():
        groups[_where(entry["frames"])].append(entry["size"])
    lines = [
        f"peak {peak / 2**30:.3f} GiB allocated at trace entry {peak_at} of {len(trace)}, "
        f"{len(live)} blocks alive; the allocation that reached it: {_where(trace[peak_at]['frames'])}",
        f"{'MiB':>9} {'blocks':>6}  allocated at",
    ]
    for where, block_sizes in sorted(groups.items(), key=lambda item: -sum(item[1]))[:top]:
        lines.append(f"{sum(block_sizes) / 2**20:9.1f} {len(block_sizes):6d}  {where}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as handle:
        print(report(pickle.load(handle)), end="")
