"""Loading models under test: the embedded Gemma, local HF checkpoints, PEFT adapters, bitsandbytes quantisation.

Each loaded model carries content fingerprints (weights, tokenizer, adapter weights) that key the cache and
go into the run record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from harness.embedded import EMBEDDED_MODEL, embedded_checkpoint_dir
from harness.errors import HarnessError
from harness.fingerprint import hash_files, hash_json

Quant = Literal["none", "nf4", "int8"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
_ADAPTER_PATTERNS = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json")


class ModelOptions(BaseModel):
    """How to load the model under test (the `--model/--dtype/--device/--quant` flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = EMBEDDED_MODEL
    dtype: DType = "auto"
    device: str = "auto"
    quant: Quant = "none"

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    fingerprint: str


@dataclass
class LoadedModel:
    """A base model with zero or more PEFT adapters loaded over it; `activate` switches between them."""

    model: Any
    tokenizer: Any
    options: ModelOptions
    checkpoint: str
    base_fingerprint: str
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    active_adapter: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """What the model computes depends on: weights, tokenizer, active adapter, dtype, quantisation, device."""
        adapter = self.adapters[self.active_adapter].fingerprint if self.active_adapter else None
        return hash_json(
            {
                "base": self.base_fingerprint,
                "adapter": adapter,
                "dtype": str(self.options.resolved_dtype()),
                "quant": self.options.quant,
                "device": self.device.type,
            }
        )

    @contextlib.contextmanager
    def activate(self, adapter_name: str | None) -> Iterator[None]:
        """Run with one adapter active (or none: the bare base), without reloading the base."""
        previous = self.active_adapter
        self.active_adapter = adapter_name
        try:
            if adapter_name is None and self.adapters:
                with self.model.disable_adapter():
                    yield
            else:
                if adapter_name is not None:
                    self.model.set_adapter(adapter_name)
                yield
        finally:
            self.active_adapter = previous

    def load_adapter(self, adapter_dir: Path, name: str | None = None) -> str:
        """Load a PEFT adapter over the base; returns the name to `activate` it by."""
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise HarnessError(
                "not a PEFT adapter folder (no adapter_config.json)", path=adapter_dir, field="--adapter"
            )
        name = name or f"adapter{len(self.adapters)}"
        try:
            if self.adapters:
                self.model.load_adapter(str(adapter_dir), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as error:
            raise HarnessError(f"cannot load this adapter over {self.checkpoint}: {error}", path=adapter_dir) from None
        self.model.eval()
        fingerprint = hash_files(_matching(adapter_dir, _ADAPTER_PATTERNS), adapter_dir)
        self.adapters[name] = AdapterInfo(name=name, path=adapter_dir.resolve(), fingerprint=fingerprint)
        return name


def _matching(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return [path for pattern in patterns for path in folder.glob(pattern) if path.is_file()]


def resolve_checkpoint(name: str) -> Path:
    """The local folder for a model name: the embedded model's cached conversion, or an HF checkpoint dir."""
    if name == EMBEDDED_MODEL:
        return embedded_checkpoint_dir()
    path = Path(name)
    if not (path / "config.json").is_file():
        raise HarnessError(
            "not a model: expected the embedded model's name or a local HF checkpoint folder with config.json",
            path=name,
            field="--model",
            hint=f"use '{EMBEDDED_MODEL}' or a folder saved with save_pretrained (no hub downloads here)",
        )
    return path


def _quantization_config(options: ModelOptions) -> Any:
    if options.quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if options.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=options.resolved_dtype(),
    )


def load_model(options: ModelOptions) -> LoadedModel:
    """Load the base model and tokenizer named by `options` (adapters are added with `load_adapter`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = resolve_checkpoint(options.name)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint,
        dtype=options.resolved_dtype(),
        quantization_config=_quantization_config(options),
        device_map={"": options.resolved_device()},
    )
    model.eval()
    weight_files = _matching(checkpoint, _WEIGHT_PATTERNS) + _matching(checkpoint, _TOKENIZER_FILES)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        options=options,
        checkpoint=str(checkpoint),
        base_fingerprint=hash_files(weight_files, checkpoint),
    )
