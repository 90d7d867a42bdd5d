"""The trainer on the real embedded Gemma (CPU): eval loss falls, seeds reproduce, early stopping keeps the
best adapter, a kill -9 mid-run resumes to the same final loss, and merging preserves the logits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from adapters.config import TrainConfig
from adapters.trainer import train

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]


@pytest.fixture(scope="module")
def number_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "numbers.jsonl"
    rows = [{"instruction": f"Write the number {i} in words.", "output": word} for i, word in enumerate(NUMBERS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def small_config(**changes: object) -> TrainConfig:
    base = {
        "max_steps": 4,
        "batch_size": 2,
        "packing": False,
        "eval_every": 2,
        "save_every": 2,
        "eval_fraction": 0.25,
        "lora_r": 4,
        "warmup_steps": 1,
        "learning_rate": 1e-3,
    }
    return TrainConfig.model_validate({**base, **changes})


def test_training_lowers_eval_loss_and_writes_a_manifest(number_data: Path, tmp_path: Path) -> None:
    out = train(small_config(max_steps=6, packing=True), number_data, tmp_path / "adapter")
    manifest = json.loads((out / "manifest.json").read_text())
    curve = [point["eval_loss"] for point in manifest["eval_curve"]]
    assert manifest["eval_curve"][0]["step"] == 0  # the untrained baseline
    assert curve[-1] < curve[0]
    assert manifest["best_eval_loss"] == min(curve)
    assert manifest["steps"] == 6 and manifest["train_rows"] == 9 and manifest["eval_rows"] == 3
    assert manifest["config"]["quant"] == "nf4" and len(manifest["base_fingerprint"]) == 64
    assert manifest["tokens_per_second"] > 0 and manifest["peak_memory_bytes"] > 0
    assert all(
        point["grad_norm"] > 0 and torch.isfinite(torch.tensor(point["grad_norm"])) for point in manifest["loss_curve"]
    )
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()


def test_same_seed_gives_the_same_adapter(number_data: Path, tmp_path: Path) -> None:
    adapters = []
    for name in ("first", "second"):
        out = train(small_config(max_steps=2, quant="none"), number_data, tmp_path / name)
        adapters.append(load_file(out / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][key], adapters[1][key]) for key in adapters[0])
    other_seed = train(small_config(max_steps=2, quant="none", seed=1), number_data, tmp_path / "other")
    other = load_file(other_seed / "adapter_model.safetensors")
    assert not all(torch.equal(adapters[0][key], other[key]) for key in other)


def test_early_stopping_keeps_the_best_adapter(number_data: Path, tmp_path: Path) -> None:
    # A learning rate this large makes the eval loss climb after the first evaluation.
    config = small_config(max_steps=12, learning_rate=0.5, warmup_steps=0, eval_every=1, patience=2, quant="none")
    out = train(config, number_data, tmp_path / "adapter")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] < 12
    trained = [point for point in manifest["eval_curve"] if point["step"] > 0]  # step 0: before training
    best = min(trained, key=lambda point: point["eval_loss"])
    assert manifest["best_step"] == best["step"] < manifest["steps"]
    published = load_file(out / "adapter_model.safetensors")
    kept = load_file(out / "best" / "adapter_model.safetensors")
    assert all(torch.equal(published[key], kept[key]) for key in kept)


def train_command(data: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(config),
        *extra,
    ]


@pytest.mark.slow
def test_kill_9_then_resume_ends_with_the_same_loss(number_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        "max_steps: 8\nbatch_size: 2\npacking: false\neval_every: 4\nsave_every: 1\n"
        "eval_fraction: 0.25\nlora_r: 4\nwarmup_steps: 1\nlearning_rate: 0.001\n"
    )
    finished = subprocess.run(train_command(number_data, tmp_path / "whole", config), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert f"best eval loss {whole['best_eval_loss']:.4f}" in finished.stdout
    # Libraries' noise the user cannot act on stays out (bitsandbytes' hub-kernel offer, peft's deprecation).
    assert "kernels-community" not in finished.stderr and "is_gradient_checkpointing" not in finished.stderr

    killed_out = tmp_path / "killed"
    victim = subprocess.Popen(
        train_command(number_data, killed_out, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 180
    while not (killed_out / "checkpoints" / "step-000003").exists() and time.monotonic() < deadline:
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (killed_out / "manifest.json").exists()

    subprocess.run(train_command(number_data, killed_out, config, "--resume"), check=True, capture_output=True)
    resumed = json.loads((killed_out / "manifest.json").read_text())
    assert resumed["steps"] == whole["steps"] == 8
    assert resumed["loss_curve"][-1]["loss"] == pytest.approx(whole["loss_curve"][-1]["loss"], abs=1e-4)
    assert resumed["best_eval_loss"] == pytest.approx(whole["best_eval_loss"], abs=1e-4)


def test_resume_refuses_a_changed_config(number_data: Path, tmp_path: Path) -> None:
    from harness.core.errors import HarnessError

    train(small_config(max_steps=2, quant="none"), number_data, tmp_path / "adapter")
    with pytest.raises(HarnessError, match="different config"):
        train(small_config(max_steps=3, quant="none"), number_data, tmp_path / "adapter", resume=True)


@pytest.mark.parametrize("config_path", sorted((Path(__file__).parents[2] / "examples").glob("train*.yaml")))
def test_shipped_training_configs_validate(config_path: Path) -> None:
    from adapters.config import load_train_config

    config = load_train_config(config_path, {})
    assert config.model == "gemma-3-270m"


def test_bad_config_names_file_line_and_field(tmp_path: Path) -> None:
    from adapters.config import load_train_config
    from harness.core.errors import HarnessError

    path = tmp_path / "train.yaml"
    path.write_text("lora_r: 8\nlearning_rate: -1\n")
    with pytest.raises(HarnessError, match=r"train.yaml:2: field 'learning_rate'"):
        load_train_config(path, {})
    path.write_text("lora_rank: 8\n")
    with pytest.raises(HarnessError, match="lora_rank"):
        load_train_config(path, {})


@pytest.mark.skipif(torch.cuda.is_available(), reason="`device: auto` must resolve to the CPU")
def test_cuda_graphs_without_a_gpu_name_the_field() -> None:
    """`device: auto` resolves to the CPU only at model load, so the trainer checks there too."""
    from adapters.trainer import build_model
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError, match="field 'cuda_graph': CUDA graphs need a CUDA device, not cpu"):
        build_model(TrainConfig(cuda_graph=True))


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("compile: true\nkeep_activations: 0.05\n", 2, "keep_activations", "applies to compiled, checkpointed"),
        ("device: cpu\nlora_r: 8\ncuda_graph: true\n", 3, "cuda_graph", "need a CUDA device"),
        ("lora_r: 8\ndevice: cuda:64\n", 2, "device", "cuda:64 requested, but torch sees"),
    ],
)
def test_options_that_conflict_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    from adapters.config import load_train_config
    from harness.core.errors import HarnessError

    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError, match=rf"train.yaml:{line}: field '{field}': .*{message}"):
        load_train_config(path, {})
    with pytest.raises(HarnessError, match=rf"^field '{field}': "):  # from the command line: no file to name
        load_train_config(None, dict(yaml.safe_load(text)))


def test_auto_attention_on_a_gpu(tiny_gemma3: Callable[..., torch.nn.Module]) -> None:
    """On a GPU, `attention: auto` gives cuDNN's kernels where the frontend is installed, soft-capped models
    (Gemma 2) included, and flex attention to soft-capped models without it and to any with `keep_activations`
    (kept cuDNN sdpa outputs broke the gradients, BENCHMARKS.md runs 38-52). Tiny random models stand in: only
    their attention setting is read."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    from adapters.trainer import _faster_attention
    from harness.kernels import cudnn_attention

    def chosen(model: torch.nn.Module, keep: float) -> str:
        _faster_attention(model, TrainConfig(compile=True, gradient_checkpointing=True, keep_activations=keep))
        return model.config._attn_implementation

    def gemma2() -> torch.nn.Module:
        config = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, head_dim=8, num_hidden_layers=1)
        return AutoModelForCausalLM.from_config(config, attn_implementation="eager")

    frontend = cudnn_attention.available()  # a GPU with the cudnn extra
    assert chosen(tiny_gemma3(), 0.0) == ("cudnn" if frontend else "sdpa")
    assert chosen(gemma2(), 0.0) == ("cudnn" if frontend else "flex_attention")
    assert chosen(tiny_gemma3(), 0.05) == chosen(gemma2(), 0.05) == "flex_attention"


def test_sliced_mlps_give_the_same_loss_and_gradients() -> None:
    """`mlp_chunks` changes the MLP's memory, not its result: the same NLL and LoRA gradients on the real model."""
    from adapters.loss import supervised_nll
    from adapters.packing import collate
    from adapters.tokenize import IGNORE_INDEX, TokenizedExample
    from adapters.trainer import build_model, chunk_mlps

    model, _ = build_model(TrainConfig(device="cpu", lora_dropout=0.0))
    model.train()
    ids = torch.randint(10, 20_000, (3, 24), generator=torch.Generator().manual_seed(0)).tolist()
    batch = collate([[TokenizedExample(row, [IGNORE_INDEX] * 4 + row[4:], 0)] for row in ids], pad_id=0)
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        nll = supervised_nll(model, batch)
        nll.backward()
        return float(nll), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    whole, whole_grads = loss_and_grads()
    chunk_mlps(model, 2)  # 3 rows: slices of 2 and 1
    sliced, sliced_grads = loss_and_grads()
    assert [name for name, parameter in model.named_parameters() if parameter.requires_grad] == names
    assert sliced == pytest.approx(whole, rel=1e-6)
    mlp_grads = 0
    for name, a, b in zip(names, whole_grads, sliced_grads, strict=True):
        relative = float((a - b).norm() / a.norm()) if a.norm() > 0 else float(b.norm())
        # the rows' sums are grouped differently: fp32 noise, measured up to 1.3e-5 (AVX-512/AMX CPU, 2026-12-01)
        assert relative < 3e-5, f"{name}: {relative:.2e}"
        mlp_grads += ".mlp." in name and bool(a.abs().sum() > 0)
    assert mlp_grads > 0


class _RunsCode:
    """Unpickling this writes a file: what a checkpoint from someone else could do on --resume."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "ran"))  # type: ignore[return-value]


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path) -> None:
    """state.pt is loaded with weights_only: a pickle that calls code is refused, naming the file, and runs nothing."""
    from adapters.checkpoints import CHECKPOINTS, restore_latest
    from harness.core.errors import HarnessError

    marker = tmp_path / "marker.txt"
    step = tmp_path / "out" / CHECKPOINTS / "step-000001"
    step.mkdir(parents=True)
    torch.save({"state": _RunsCode(marker)}, step / "state.pt")
    with pytest.raises(HarnessError, match="cannot resume from this checkpoint") as raised:
        restore_latest(tmp_path / "out", None, None, None, TrainConfig(), dict)
    assert str(step / "state.pt") in str(raised.value)
    assert not marker.exists()


def test_training_refuses_to_overwrite_an_adapter_without_resume(tmp_path: Path) -> None:
    """A finished adapter (or a killed run's checkpoints) in --out is kept: training again needs --resume or another
    folder, and says so before any model is loaded."""
    from adapters.trainer import MANIFEST, train
    from harness.core.errors import HarnessError

    out = tmp_path / "adapter"
    out.mkdir()
    (out / MANIFEST).write_text("{}")
    with pytest.raises(HarnessError, match="already holds an adapter") as raised:
        train(TrainConfig(), tmp_path / "missing.jsonl", out)
    assert "--resume" in str(raised.value) and str(out) in str(raised.value)


def test_a_malformed_training_row_stops_before_the_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data file is parsed first: a bad row names its file, line and field without the minute a model load
    takes (build_model is replaced by a probe that fails the test if reached)."""
    import adapters.trainer
    from harness.core.errors import HarnessError

    def must_not_load(config: TrainConfig) -> None:
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(adapters.trainer, "build_model", must_not_load)
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "Say hi", "output": "hi"}\n{"instruction": "Say bye", "output": \n')
    with pytest.raises(HarnessError, match=r"train.jsonl:2"):
        adapters.trainer.train(TrainConfig(), data, tmp_path / "out")
