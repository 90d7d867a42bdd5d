"""Merge a LoRA adapter into its base model: always into dequantized weights, never into 4-bit ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from harness.backends.hf import ModelOptions, load_model
from harness.core.errors import HarnessError


def base_model_of(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, from its manifest (or the PEFT config)."""
    for name, key in (("manifest.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        path = adapter_dir / name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if value:
                return str(value)
    raise HarnessError(
        "cannot tell the adapter's base model", path=adapter_dir, field="base_model", hint="pass --model"
    )


def merge(adapter_dir: Path, out: Path, model: str | None = None, dtype: str = "float32") -> Path:
    """Load the base unquantized in `dtype`, apply the adapter, merge, save safetensors + tokenizer to `out`."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise HarnessError("not a PEFT adapter folder (no adapter_config.json)", path=adapter_dir, field="ADAPTER")
    loaded = load_model(ModelOptions(name=model or base_model_of(adapter_dir), dtype=dtype, device="cpu"))
    with torch.no_grad():
        merged = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    loaded.tokenizer.save_pretrained(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
