"""Training checkpoints: adapter weights, optimizer, scheduler, RNG and loop state, written atomically.

A checkpoint folder appears under its final name only once complete (written as `.partial`, then renamed),
so a run killed at any moment resumes from the last complete one.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, TypeVar

import torch

from adapters.config import TrainConfig
from harness.core.errors import HarnessError

CHECKPOINTS = "checkpoints"
BEST = "best"
KEEP_LAST = 2
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")

State = TypeVar("State")


def _replace_dir(staging: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def save_adapter(model: Any, folder: Path) -> None:
    """The model's adapter as PEFT safetensors, replacing `folder` atomically."""
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    _replace_dir(staging, folder)


def publish_adapter(source: Path | None, model: Any, out: Path) -> None:
    """Put the adapter files at the top of `out`: copied from `source` (the best checkpoint) or saved fresh."""
    staging = out / ".adapter.partial"
    shutil.rmtree(staging, ignore_errors=True)
    if source is None:
        model.save_pretrained(staging)
    else:
        shutil.copytree(source, staging)
    for name in ADAPTER_FILES:
        os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)


def save(out: Path, step: int, model: Any, optimizer: Any, scheduler: Any, config: TrainConfig, state: Any) -> None:
    folder = out / CHECKPOINTS / f"step-{step:06d}"
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging / "adapter")
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "state": dataclasses.asdict(state),
            "config": config.model_dump(mode="json"),
        },
        staging / "state.pt",
    )
    _replace_dir(staging, folder)
    for stale in complete_checkpoints(out)[:-KEEP_LAST]:
        shutil.rmtree(stale, ignore_errors=True)


def complete_checkpoints(out: Path) -> list[Path]:
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and "." not in p.name)


def restore_latest(
    out: Path, model: Any, optimizer: Any, scheduler: Any, config: TrainConfig, state_type: type[State]
) -> State | None:
    """Load the newest complete checkpoint into model/optimizer/scheduler/RNG; None when there is none."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = complete_checkpoints(out)
    if not found:
        return None
    latest = found[-1]
    # weights_only: a checkpoint folder from elsewhere must not run code on --resume (a pickle could).
    try:
        saved = torch.load(latest / "state.pt", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as error:
        raise HarnessError(
            f"cannot resume from this checkpoint: {str(error).splitlines()[0]}",
            path=latest / "state.pt",
            hint="a checkpoint holds tensors and plain values only; train into a new --out",
        ) from None
    if saved["config"] != config.model_dump(mode="json"):
        changed = sorted(k for k, v in config.model_dump(mode="json").items() if saved["config"].get(k) != v)
        raise HarnessError(
            f"the checkpoint was written with a different config ({', '.join(changed)})",
            path=latest,
            hint="resume with the same config, or train into a new --out",
        )
    set_peft_model_state_dict(model, load_file(latest / "adapter" / "adapter_model.safetensors"))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return state_type(**saved["state"])
