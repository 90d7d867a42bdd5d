"""The Python API on the real embedded Gemma: evaluate base and an adapter (the base loaded once), compare, gate."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import harness
from harness import api
from harness.backends.hf import LoadedModel, ModelOptions
from harness.backends.hf_backend import HFBackend
from harness.core.errors import HarnessError
from tests.harness.backends.test_models import make_adapter
from tests.harness.evaluation.test_runner import QA_FIELDS, QA_ROWS, TEXT_ROWS


@pytest.fixture
def api_model(gemma: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> LoadedModel:
    """The session's Gemma (a copy its adapters can attach to) as the model the API keeps loaded."""
    loaded = dataclasses.replace(gemma, _model=copy.deepcopy(gemma.model), adapters={}, _attached=[])
    monkeypatch.setattr(api, "_LOADED", {ModelOptions(): HFBackend(loaded)})
    return loaded


def test_evaluate_compare_and_gate_as_functions(
    api_model: LoadedModel, gemma: LoadedModel, task_dir: Callable[..., Path], tmp_path: Path
) -> None:
    task_dir("qa", QA_ROWS, **QA_FIELDS)
    folder = task_dir("text", TEXT_ROWS, kind="perplexity", metrics=["perplexity"])
    options = {"tasks_dir": [folder], "cache": tmp_path / "cache.sqlite"}
    base = harness.evaluate(tasks=["qa", "text"], **options)
    adapter = make_adapter(gemma, tmp_path / "adapter", seed=3)
    tuned = harness.evaluate(tasks=["qa", "text"], adapter=adapter, **options)
    again = harness.evaluate(tasks=["qa", "text"], adapter=adapter, **options)
    assert len(api._LOADED) == 1 and list(api_model.adapters) == ["adapter0"]  # base loaded once, adapter once
    assert tuned.spec.model.adapter_path == str(adapter.resolve())
    assert again.tasks["text"].n_cached == 2
    assert tuned.tasks["text"].metrics["perplexity"].value != base.tasks["text"].metrics["perplexity"].value

    comparison = harness.compare(base, tuned)
    assert {m.metric for m in comparison.tasks["text"].metrics} >= {"perplexity"}
    rules = tmp_path / "gate.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"task": "text", "metric": "perplexity", "max_drop_relative": 10.0}]}))
    (outcome,) = harness.gate(comparison, rules)
    assert not outcome.passed and "max_drop_relative 10" in outcome.message  # a random adapter wrecks perplexity
    with pytest.raises(HarnessError, match="not in both runs"):
        harness.gate(comparison, api.GateRules(rules=[{"task": "nope", "metric": "perplexity", "min": 0}]))


def test_train_then_evaluate_the_adapter_as_functions(
    api_model: LoadedModel, task_dir: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [{"instruction": f"Write the number {i} in words.", "output": w} for i, w in enumerate(["zero", "one"] * 4)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = {"quant": "none", "batch_size": 2, "lora_r": 4, "eval_fraction": 0.25, "packing": False}
    with pytest.raises(HarnessError, match="lora_r"):
        harness.train(data, tmp_path / "bad", max_steps=1, **{**settings, "lora_r": 0})
    adapter = harness.train(data, tmp_path / "adapter", max_steps=2, eval_every=2, save_every=2, **settings)
    assert adapter.steps == 2 and [p["step"] for p in adapter.manifest["loss_curve"]] == [1, 2]
    assert adapter.best_eval_loss is not None and adapter.manifest["config"]["lora_r"] == 4
    folder = task_dir("text", TEXT_ROWS, kind="perplexity", metrics=["perplexity"])
    tuned = harness.evaluate(tasks=["text"], adapter=adapter.path, tasks_dir=[folder], cache=tmp_path / "c.sqlite")
    assert tuned.spec.model.adapter_path == str(adapter.path.resolve())
    assert tuned.spec.model.training is not None and tuned.spec.model.training["steps"] == 2


def test_bad_input_raises_before_any_model_work(api_model: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="unknown task"):
        harness.evaluate(tasks=["no_such_task"])
    with pytest.raises(HarnessError, match="--adapter needs a transformers model"):
        harness.evaluate(model="gemma-3-270m-gguf", tasks=["general_english"], adapter=tmp_path)


def test_the_pytest_plugin_gates_inside_a_users_own_suite(
    api_model: LoadedModel, gemma: LoadedModel, task_dir: Callable[..., Path], tmp_path: Path
) -> None:
    """A user's test file using the `harness_gate` fixture (the plugin is registered by the installed package),
    run by pytest in its own process: a passing gate passes, a regression fails with the rules' table."""
    folder = task_dir("text", TEXT_ROWS, kind="perplexity", metrics=["perplexity"])
    base = harness.evaluate(tasks=["text"], tasks_dir=[folder], cache=False)
    tuned = harness.evaluate(
        tasks=["text"], tasks_dir=[folder], cache=False, adapter=make_adapter(gemma, tmp_path / "a", 4)
    )
    user = tmp_path / "user"
    user.mkdir()
    base.write(user / "base.json")
    tuned.write(user / "tuned.json")
    rule = {"task": "text", "metric": "perplexity", "max_drop_relative": 0.1}
    (user / "gate.yaml").write_text(yaml.safe_dump({"rules": [rule]}))
    (user / "test_user.py").write_text(
        "def test_unchanged(harness_gate):\n"
        "    harness_gate('base.json', 'base.json', 'gate.yaml')\n\n"
        "def test_tuned(harness_gate):\n"
        "    harness_gate('tuned.json', 'base.json', 'gate.yaml')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=user, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    assert "1 of 1 gate rule(s) failed" in result.stdout and "FAIL  text  perplexity" in result.stdout
