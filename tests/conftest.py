"""Shared fixtures: one real embedded Gemma per session, an isolated result cache per test, tiny random Gemma 3
models where only the mechanics matter."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from harness.backends.hf import LoadedModel, ModelOptions, load_model
from harness.core.cache import ResultCache

REPO_ROOT = Path(__file__).resolve().parents[1]

# inductor's on-disk cache keys a compiled graph by the graph, not by a custom operator's fake function: a cache
# left by an earlier version of adapters.lora_addmm served stale output strides. Each session compiles afresh.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-tests-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)


@pytest.fixture(scope="session")
def gemma() -> LoadedModel:
    """The real embedded Gemma 3 270M (fp32, CPU), loaded once. Tests must not load adapters into it."""
    return load_model(ModelOptions())


@pytest.fixture
def result_cache(tmp_path: Path) -> Iterator[ResultCache]:
    cache = ResultCache(tmp_path / "cache.sqlite")
    yield cache
    cache.close()


@pytest.fixture
def task_dir(tmp_path: Path) -> Callable[..., Path]:
    """Returns `make(name, rows, **yaml_fields)`: writes data JSONL + task YAML into a fresh tasks folder."""
    folder = tmp_path / "tasks"
    folder.mkdir()

    def make(name: str, rows: list[dict[str, Any]], **fields: Any) -> Path:
        data_path = folder / f"{name}.jsonl"
        data_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        spec = {"name": name, "data": data_path.name, **fields}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
        return folder

    return make


def _tiny_gemma3(attention: str = "sdpa", width: int = 32, vocab: int = 512) -> torch.nn.Module:
    """A tiny random Gemma 3 (eval mode, on the CPU, two layers: one sliding, one full) stands in for the embedded
    one where only the attention or the training mechanics matter: its sliding window (16) is shorter than the
    rows, which the embedded model's (512) is not, and what is under test is which keys each query sees, which
    back-end is chosen or how steps replay, not the weights."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, head_dim=width // 2, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


@pytest.fixture
def tiny_gemma3() -> Callable[..., torch.nn.Module]:
    """Returns a builder of fresh tiny random Gemma 3 models (seeded: every one of a size has the same weights)."""
    return _tiny_gemma3


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache with offline mode on, as a CI machine without network sees it. The switches are
    patched on the modules: datasets and huggingface_hub read their environment variables once, at import."""
    import datasets
    import huggingface_hub

    root = tmp_path / "hf"
    for name, value in (("HF_HOME", str(root)), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1")):
        monkeypatch.setenv(name, value)  # for subprocesses
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "datasets")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", root / "datasets" / "downloads")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hub"))
    return root
