"""Data parallelism across processes launched by `torchrun` or `accelerate launch` (gloo on CPU, NCCL on GPU).

One process per device; nothing here does anything when WORLD_SIZE is 1.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def init_from_env() -> None:
    """Join the process group the launcher described in the environment (once)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_device() -> str:
    """This process's device: its own GPU under a launcher, else the first GPU, else the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if dist.is_initialized() else "cuda"


def shard(items: list[T]) -> list[T]:
    """This rank's share: every world_size-th item from its rank."""
    return items[rank() :: world_size()]


def gather_dicts(mine: dict[str, Any]) -> dict[str, Any]:
    """The union of every rank's dict (all ranks receive it)."""
    if not dist.is_initialized():
        return mine
    parts: list[dict[str, Any] | None] = [None] * world_size()
    dist.all_gather_object(parts, mine)
    return {key: value for part in parts if part for key, value in part.items()}


def sum_tensors(*tensors: torch.Tensor) -> None:
    """All-reduce (sum) in place across ranks."""
    if dist.is_initialized():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
