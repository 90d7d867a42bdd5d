"""Fine-tuning: data formats, checks, the Gemma template, packing, the QLoRA training loop, checkpoints, merging."""

from adapters.config import TrainConfig, load_train_config
from adapters.merge import merge
from adapters.trainer import train

__all__ = ["TrainConfig", "load_train_config", "merge", "train"]
