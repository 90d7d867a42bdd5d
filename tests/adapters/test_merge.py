"""Merging an NF4-trained adapter into the dequantized base keeps base+adapter's logits (real Gemma, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from adapters.config import TrainConfig
from adapters.merge import merge
from adapters.trainer import train
from harness.backends.hf import LoadedModel, ModelOptions, load_model
from harness.core.errors import HarnessError


def test_merged_model_logits_equal_base_plus_adapter(gemma: LoadedModel, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"Colour number {i}?", "completion": c} for i, c in enumerate(["red", "green", "blue", "grey"])]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = TrainConfig(max_steps=2, batch_size=2, eval_fraction=0, lora_r=4, learning_rate=5e-3, warmup_steps=0)
    adapter_dir = train(config, data, tmp_path / "adapter")
    merged_dir = merge(adapter_dir, tmp_path / "merged")
    assert list(merged_dir.glob("*.safetensors")) and (merged_dir / "tokenizer.json").is_file()

    ids = gemma.tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids
    with torch.no_grad():
        fresh_base = load_model(ModelOptions()).model
        with_adapter = PeftModel.from_pretrained(fresh_base, str(adapter_dir))
        expected = with_adapter(input_ids=ids).logits
        merged = load_model(ModelOptions(name=str(merged_dir))).model
        actual = merged(input_ids=ids).logits
        base = gemma.model(input_ids=ids).logits
    assert torch.allclose(actual, expected, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(actual, base, atol=1e-3)  # the adapter did change something


def test_merge_rejects_a_folder_that_is_not_an_adapter(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="adapter_config"):
        merge(tmp_path, tmp_path / "merged")
