"""Fine-tuning: data formats, the Gemma template, packing, the QLoRA training loop, checkpoints, merging."""
