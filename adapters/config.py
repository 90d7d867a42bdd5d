"""Training configuration: every hyperparameter, settable in a YAML file and validated at the edge."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.formats import DataFormatName
from harness.backends.hf import Attention, Device
from harness.core.yamlfile import FieldError, read_mapping, validate


class TrainConfig(BaseModel):
    """QLoRA / LoRA fine-tuning settings. `quant: nf4` is QLoRA; `quant: none` is plain LoRA."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "gemma-3-270m"
    quant: Literal["nf4", "none"] = "nf4"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: Device = "auto"
    data_format: DataFormatName = "auto"
    skip_bad_rows: bool = False
    train_on_prompt: bool = False
    drop_duplicates: bool = True
    drop_leaked: bool = True
    leakage_tasks: list[str] = Field(default_factory=list, description="eval tasks checked for n-gram leakage")
    max_seq_len: int = Field(512, gt=8)
    packing: bool = True
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(5, ge=0)
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    batch_size: int = Field(4, gt=0, description="sequences per micro-batch")
    grad_accum: int = Field(1, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    mlp_chunks: int = Field(
        1, gt=0, description="run each MLP on this many slices of the micro-batch's rows (less memory in backward)"
    )
    lora_addmm: bool = Field(
        False,
        description="compute each LoRA product with its base matmul, scaled on the rank side (as more input columns "
        "where the projection widens, else added into the output in place), the projections of one input as one "
        "matmul: no separate [tokens x width] LoRA outputs or scaled gradient copies (a compiled layer's backward "
        "needs less memory)",
    )
    compile: bool = Field(False, description="torch.compile each decoder layer (GPU: fewer, fused kernels)")
    keep_activations: float = Field(
        0.0,
        ge=0,
        le=1,
        description="compile + checkpointing: the share of a layer's activations the compiler may keep for the "
        "backward instead of recomputing them (0: only the layer's input), picked by recompute cost per byte",
    )
    keep_projection_outputs: int = Field(
        0,
        ge=0,
        description="compile + checkpointing + lora_addmm: in this many decoder layers (the last), keep the outputs "
        "of the projections that narrow their input (the MLP's down projection) for the backward instead of running "
        "those matmuls again (one [tokens x hidden] tensor each)",
    )
    cuda_graph: bool = Field(
        False, description="replay each micro-batch's forward and backward as one CUDA graph (GPU; fixed shapes)"
    )
    attention: Attention = Field("auto", description="attention back-end: auto, eager, sdpa, flex_attention or cudnn")
    seed: int = 0
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share when no --eval-data is given")
    eval_every: int = Field(20, gt=0)
    patience: int | None = Field(None, gt=0, description="evaluations without improvement before stopping")
    save_every: int = Field(20, gt=0)

    @model_validator(mode="after")
    def _options_fit_together(self) -> TrainConfig:
        if self.keep_activations and not (self.compile and self.gradient_checkpointing):
            raise FieldError(
                "keep_activations",
                "keep_activations applies to compiled, checkpointed layers: set compile: true and "
                "gradient_checkpointing: true, or keep_activations: 0",
            )
        if self.keep_projection_outputs and not (self.compile and self.gradient_checkpointing and self.lora_addmm):
            raise FieldError(
                "keep_projection_outputs",
                "keep_projection_outputs applies to compiled, checkpointed layers with lora_addmm: set compile, "
                "gradient_checkpointing and lora_addmm true, or keep_projection_outputs: 0",
            )
        if self.cuda_graph and self.device == "cpu":  # `auto` resolving to the CPU is caught at model load
            raise FieldError("cuda_graph", "CUDA graphs need a CUDA device: set cuda_graph: false or a cuda device")
        return self


def load_train_config(path: Path | None, overrides: Mapping[str, object]) -> TrainConfig:
    """The YAML config (if any) with command-line overrides on top; errors name the file, line and field."""
    raw, root = read_mapping(path, "a training config") if path is not None else ({}, None)
    given = {key: value for key, value in overrides.items() if value is not None}
    return validate(TrainConfig, {**raw, **given}, path, root, from_file=set(raw) - set(given))
