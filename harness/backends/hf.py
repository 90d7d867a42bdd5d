"""Loading models under test: the embedded Gemma, local HF checkpoints, PEFT adapters, bitsandbytes quantisation.

Each loaded model carries content fingerprints (weights, tokenizer, adapter weights) that key the cache and
go into the run record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict

from harness.backends.embedded import EMBEDDED_MODEL, embedded_checkpoint_dir
from harness.backends.hub_model import is_hub_id, resolve_hub_model
from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_files, hash_json
from harness.kernels.attention import caps_attention

Quant = Literal["none", "nf4", "int8"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
# Attention back-ends: "auto" is cudnn on a GPU with the cuDNN frontend (ModelOptions.resolved_attention), else
# transformers' default (sdpa, or eager for Gemma 2, whose attention soft-cap sdpa cannot apply: _load_weights sees
# to that). flex_attention applies the soft-cap and sliding windows in one compiled kernel; cudnn
# (harness.kernels.cudnn_attention) runs cuDNN's flash kernels with sliding windows and the soft-cap, on a GPU.
Attention = Literal["auto", "eager", "sdpa", "flex_attention", "cudnn"]


def _usable_device(name: str) -> str:
    """`auto`, `cpu`, `cuda` or `cuda:N`, checked against the devices torch sees here (these options are only ever
    read from the user's flags and files, never from records written on another machine)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, not {name!r}")
    if name.startswith("cuda"):
        count = torch.cuda.device_count()
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            seen = f"{count} CUDA device(s)" if count else f"no CUDA device (torch {torch.__version__})"
            raise ValueError(f"{name} requested, but torch sees {seen} here: use auto or cpu")
    return name


Device = Annotated[str, AfterValidator(_usable_device)]
log = logging.getLogger(__name__)

# bitsandbytes' CPU backend offers, when it is imported, a kernel downloaded from a hub (`pip install kernels`):
# nothing may be fetched from a hub here, and its own kernel is the one measured and tested. (A logger made now
# is the one bitsandbytes gets later.)
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "from kernels-community" not in record.getMessage()
)
# peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: a warning about the two
# libraries' versions, nothing the user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
_ADAPTER_PATTERNS = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json")


class ModelOptions(BaseModel):
    """How to load the model under test (the `--model/--dtype/--device/--quant` flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = EMBEDDED_MODEL
    dtype: DType = "auto"
    device: Device = "auto"
    quant: Quant = "none"
    attention: Attention = "auto"
    compile: bool = False  # torch.compile the decoder for scoring; compiled static-cache decoding on a GPU

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        from harness.backends.distributed import local_device

        return local_device()

    def resolved_attention(self) -> str:
        """`auto` on a GPU where the cuDNN frontend is installed: cudnn (harness.kernels.cudnn_attention), whose kernels
        take the sliding windows and Gemma 2's soft-cap themselves, as the trainer's `auto` does; elsewhere `auto`
        leaves the choice to transformers."""
        if self.attention == "auto" and self.resolved_device().startswith("cuda"):
            from harness.kernels import cudnn_attention

            if cudnn_attention.available():
                return cudnn_attention.NAME
        return self.attention

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
    """A base model with zero or more PEFT adapters over it; `activate` switches between them.

    Weights and tokenizer load on first use: a run served entirely from the cache needs only the
    fingerprints, which come from the files.
    """

    options: ModelOptions
    checkpoint: Path
    base_fingerprint: str
    hub_revision: str | None = None  # the snapshot commit of a model named by its hub ID
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    active_adapter: str | None = None
    _model: Any = None
    _tokenizer: Any = None
    _attached: list[str] = field(default_factory=list)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The torch model (a PeftModel once adapters are attached), loaded and adapters attached on first use."""
        if self._model is None:
            self._model = _load_weights(self.checkpoint, self.options)
        for name in [n for n in self.adapters if n not in self._attached]:
            self._model = _attach_adapter(self._model, self.adapters[name], first=not self._attached)
            self._attached.append(name)
        return self._model

    @property
    def device(self) -> torch.device:
        return torch.device(self.options.resolved_device())

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
                # Back-end and compilation change bf16 rounding; the defaults keep earlier fingerprints valid.
                **({"attention": attention} if (attention := self.options.resolved_attention()) != "auto" else {}),
                **({"compile": True} if self.options.compile else {}),
            }
        )

    @contextlib.contextmanager
    def activate(self, adapter_name: str | None) -> Iterator[None]:
        """Evaluate with one adapter active (or none: the bare base), without reloading the base."""
        previous = self.active_adapter
        self.active_adapter = adapter_name
        try:
            yield
        finally:
            self.active_adapter = previous

    @contextlib.contextmanager
    def engaged(self) -> Iterator[Any]:
        """The torch model with the active adapter (or none) switched on, for the duration of a computation."""
        model = self.model
        if self.active_adapter is None and self._attached:
            with model.disable_adapter():
                yield model
        else:
            if self.active_adapter is not None:
                model.set_adapter(self.active_adapter)
            yield model

    def load_adapter(self, adapter_dir: Path, name: str | None = None) -> str:
        """Register a PEFT adapter over the base (its weights attach on first use); returns its name."""
        adapter_dir = Path(adapter_dir)
        check_adapter(adapter_dir)
        name = name or f"adapter{len(self.adapters)}"
        fingerprint = adapter_fingerprint(adapter_dir)
        self.adapters[name] = AdapterInfo(name=name, path=adapter_dir.resolve(), fingerprint=fingerprint)
        return name


def check_adapter(adapter_dir: Path) -> None:
    """A PEFT adapter folder whose config parses and whose safetensors weights are whole; checked before any model
    loads (the weights attach on first use, so a damaged file failed only in the middle of an evaluation)."""
    from safetensors import SafetensorError, safe_open

    def bad(reason: str, path: Path) -> HarnessError:
        return HarnessError(f"not a usable PEFT adapter: {reason}", path=path, field="--adapter")

    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise bad("no adapter_config.json", adapter_dir)
    try:
        if not isinstance(json.loads(config_path.read_text(encoding="utf-8")), dict):
            raise bad("its config is not a JSON object", config_path)
    except (OSError, ValueError) as error:
        raise bad(f"its config does not parse ({error})", config_path) from None
    weights = sorted(adapter_dir.glob("adapter_model*.safetensors"))
    if not weights and not any(adapter_dir.glob("adapter_model*.bin")):
        raise bad("no adapter_model.safetensors", adapter_dir)
    for path in weights:
        try:
            with safe_open(str(path), "pt") as tensors:
                tensors.keys()
        except (OSError, SafetensorError) as error:
            raise bad(f"damaged weights ({error})", path) from None


_UNORDERED_CONFIG_LISTS = ("target_modules", "modules_to_save", "exclude_modules")


def adapter_fingerprint(adapter_dir: Path) -> str:
    """The adapter's weights plus its config as content: PEFT writes `target_modules` from a set, so the same
    adapter saved by two processes can list them in different orders."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    for key in _UNORDERED_CONFIG_LISTS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    weights = [p for p in _matching(adapter_dir, _ADAPTER_PATTERNS) if p.name != "adapter_config.json"]
    return hash_json({"config": config, "weights": hash_files(weights, adapter_dir)})


def _attach_adapter(model: Any, adapter: AdapterInfo, first: bool) -> Any:
    from peft import PeftModel

    try:
        if first:
            model = PeftModel.from_pretrained(model, str(adapter.path), adapter_name=adapter.name)
        else:
            model.load_adapter(str(adapter.path), adapter_name=adapter.name)
    except (RuntimeError, ValueError, KeyError) as error:
        raise HarnessError(f"cannot load this adapter over the base model: {error}", path=adapter.path) from None
    model.eval()
    return model


def _matching(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return [path for pattern in patterns for path in folder.glob(pattern) if path.is_file()]


def resolve_checkpoint(name: str) -> Path:
    """The local folder for a model name: the embedded model's cached conversion, an HF checkpoint dir, or a hub
    ID's snapshot (harness.backends.hub_model)."""
    return _locate_checkpoint(name)[0]


def _locate_checkpoint(name: str) -> tuple[Path, str | None]:
    """The checkpoint folder, and for a hub ID the snapshot's commit."""
    if name == EMBEDDED_MODEL:
        return embedded_checkpoint_dir(), None
    path = Path(name)
    if (path / "config.json").is_file():
        return path, None
    if is_hub_id(name):
        snapshot = resolve_hub_model(name)
        return snapshot.path, snapshot.commit
    raise HarnessError(
        "not a model: expected the embedded model's name, a local HF checkpoint folder with config.json, or a hub ID",
        path=name,
        field="--model",
        hint=f"use '{EMBEDDED_MODEL}', a folder saved with save_pretrained, org/name[@revision], gguf:PATH or "
        "openai:MODEL",
    )


def resolve_adapter_dir(name: Path | str) -> Path:
    """An adapter folder, or a hub ID's snapshot of one (a local folder wins)."""
    if not Path(name).exists() and is_hub_id(str(name)):
        return resolve_hub_model(str(name), kind="adapter", field="--adapter").path
    return Path(name)


def _quantization_config(options: ModelOptions) -> Any:
    if options.quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if options.quant == "int8":
        # bitsandbytes warns on every matmul that fp32 inputs are cast to fp16; once is information enough.
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast", module="bitsandbytes")
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=options.resolved_dtype(),
    )


def _load_weights(checkpoint: Path, options: ModelOptions) -> Any:
    from transformers import AutoModelForCausalLM

    attention = options.resolved_attention()
    if attention == "cudnn":
        _check_cudnn_attention()
    if attention == "sdpa":
        from transformers import AutoConfig

        if caps_attention(AutoConfig.from_pretrained(checkpoint)):
            raise HarnessError(
                "attention: sdpa cannot apply this model's attention soft-cap (Gemma 2): its scores would not be "
                "the model's",
                field="--attention",
                hint="use auto, eager or flex_attention",
            )
    log.debug(
        "loading %s (%s, %s, attention %s, quantization %s)",
        checkpoint, options.resolved_dtype(), options.resolved_device(), attention, options.quant,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint,
        dtype=options.resolved_dtype(),
        quantization_config=_quantization_config(options),
        device_map={"": options.resolved_device()},
        attn_implementation=None if attention == "auto" else attention,
    )
    if attention == "auto" and caps_attention(model.config) and model.config._attn_implementation == "sdpa":
        # Some transformers versions (5.17) pick sdpa for Gemma 2, which drops its attention soft-cap silently.
        model.set_attn_implementation("eager")
    model.eval()
    return model


def _check_cudnn_attention() -> None:
    from harness.kernels import cudnn_attention

    if not cudnn_attention.available():
        raise HarnessError(
            "attention: cudnn needs a CUDA device and the cuDNN frontend",
            field="attention",
            hint="install the cudnn extra (pip install -e '.[cudnn]') or use attention: auto",
        )
    cudnn_attention.register()


def load_model(options: ModelOptions) -> LoadedModel:
    """The model named by `options`: fingerprinted now, weights loaded on first use. Add adapters with
    `load_adapter`."""
    checkpoint, commit = _locate_checkpoint(options.name)
    weight_files = _matching(checkpoint, _WEIGHT_PATTERNS) + _matching(checkpoint, _TOKENIZER_FILES)
    return LoadedModel(
        options=options,
        checkpoint=checkpoint,
        base_fingerprint=hash_files(weight_files, checkpoint),
        hub_revision=commit,
    )
