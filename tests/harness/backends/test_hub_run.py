"""`harness run --model org/name@revision` end to end, offline, from a pre-filled hub cache: a real (tiny, random)
Gemma 3 with the embedded model's tokenizer, saved as a hub snapshot, evaluated on a generate and a perplexity task."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from typer.testing import CliRunner

from harness.backends.hf import resolve_checkpoint
from harness.cli import app
from tests.harness.evaluation.test_runner import QA_FIELDS, QA_ROWS, TEXT_ROWS

COMMIT = "c" * 40
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def prefill_tiny_gemma(hub: Path, repo_id: str, tiny_gemma3: Callable[..., torch.nn.Module]) -> Path:
    """A tiny random Gemma 3 over the embedded tokenizer's vocabulary, cached as `repo_id` at COMMIT (tag v1)."""
    repo_dir = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    tiny_gemma3(vocab=262144, width=16).save_pretrained(snapshot)
    embedded = resolve_checkpoint("gemma-3-270m")
    for name in TOKENIZER_FILES:
        if (embedded / name).is_file():
            shutil.copy(embedded / name, snapshot / name)
    (repo_dir / "refs").mkdir()
    for ref in ("main", "v1"):
        (repo_dir / "refs" / ref).write_text(COMMIT)  # no newline: huggingface_hub reads refs unstripped
    return snapshot


def test_a_hub_id_runs_offline_from_the_cache_and_records_its_commit(
    offline_hub: Path, tiny_gemma3: Callable[..., torch.nn.Module], task_dir: Callable[..., Path]
) -> None:
    snapshot = prefill_tiny_gemma(offline_hub / "hub", "acme/tiny-gemma", tiny_gemma3)
    task_dir("qa", QA_ROWS, **QA_FIELDS)
    folder = task_dir("text", TEXT_ROWS, kind="perplexity", metrics=["perplexity"])
    out = folder.parent / "runs"
    args = ["run", "--model", "acme/tiny-gemma@v1", "--tasks", "qa,text", "--tasks-dir", str(folder)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    record = json.loads(next(out.glob("*/results.json")).read_text())
    assert record["spec"]["model"]["hub_revision"] == COMMIT
    assert record["spec"]["model"]["checkpoint"] == str(snapshot)
    assert record["tasks"]["text"]["metrics"]["perplexity"]["value"] > 1


def test_an_uncached_hub_id_offline_is_one_line_with_the_prefetch_command(offline_hub: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--model", "acme/absent@v2", "--tasks", "factual_qa", "--limit", "1"])
    assert result.exit_code == 2
    assert "hf download acme/absent --revision v2" in result.output
