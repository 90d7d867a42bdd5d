"""Model loading on the real embedded Gemma: adapters switched over one base, fingerprints, quantisation."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from harness.backends.hf import LoadedModel, ModelOptions, load_model
from harness.backends.hf_backend import HFBackend
from harness.backends.hf_requests import loglikelihood_rolling
from harness.core.cache import ResultCache
from harness.evaluation.catalog import get_tasks
from harness.evaluation.runner import RunOptions, evaluate, prepare_tasks

TEXTS = ["The orchestra tuned for a long minute before the conductor walked on stage."]


def make_adapter(gemma: LoadedModel, folder: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter with random (non-zero) weights, so it changes the model's outputs."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(gemma.model), config)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def with_adapters(gemma: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("adapters")
    loaded = dataclasses.replace(gemma, _model=copy.deepcopy(gemma.model), adapters={}, _attached=[])
    for index, seed in enumerate((1, 2)):
        loaded.load_adapter(make_adapter(gemma, root / f"adapter{index}", seed), name=f"a{index}")
    return loaded


def nll(loaded: LoadedModel) -> float:
    return loglikelihood_rolling(loaded, TEXTS, 1024, 512, 1)[0].nll


def test_adapters_switch_without_reloading_the_base(gemma: LoadedModel, with_adapters: LoadedModel) -> None:
    base_weight = with_adapters.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    values = {}
    for name in (None, "a0", "a1", None, "a0"):
        with with_adapters.activate(name):
            values.setdefault(name, []).append(nll(with_adapters))
            assert with_adapters.active_adapter == name
    assert base_weight is with_adapters.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert values[None][0] == pytest.approx(nll(gemma), rel=1e-6)  # base = the plain model
    assert values[None][0] == values[None][1] and values["a0"][0] == values["a0"][1]
    assert len({values[None][0], values["a0"][0], values["a1"][0]}) == 3


def test_fingerprint_names_the_active_adapter(with_adapters: LoadedModel) -> None:
    fingerprints = []
    for name in (None, "a0", "a1"):
        with with_adapters.activate(name):
            fingerprints.append(with_adapters.fingerprint)
    assert len(set(fingerprints)) == 3
    assert with_adapters.adapters["a0"].fingerprint != with_adapters.adapters["a1"].fingerprint


def test_run_with_adapter_records_it(with_adapters: LoadedModel, tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "t.jsonl").write_text('{"text": "Bees make honey."}\n')
    (folder / "t.yaml").write_text("kind: perplexity\ndata: t.jsonl\nmetrics: [perplexity]\n")
    prepared = prepare_tasks(get_tasks(["t"], [folder]), None)
    with with_adapters.activate("a1"):
        result = evaluate(HFBackend(with_adapters), prepared, ResultCache(None), RunOptions())
    assert result.spec.model.adapter_path == str(with_adapters.adapters["a1"].path)
    assert result.spec.model.adapter_fingerprint == with_adapters.adapters["a1"].fingerprint


def test_load_adapter_rejects_a_folder_without_adapter_config(gemma: LoadedModel, tmp_path: Path) -> None:
    from harness.core.errors import HarnessError

    loaded = dataclasses.replace(gemma, adapters={}, _attached=[])
    with pytest.raises(HarnessError, match=r"adapter_config\.json"):
        loaded.load_adapter(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_bitsandbytes_quantised_inference_stays_close(gemma: LoadedModel, quant: str) -> None:
    import bitsandbytes as bnb

    quantised = load_model(ModelOptions(quant=quant))
    layer_type = bnb.nn.Linear4bit if quant == "nf4" else bnb.nn.Linear8bitLt
    assert isinstance(quantised.model.model.layers[0].mlp.up_proj, layer_type)
    assert quantised.fingerprint != gemma.fingerprint
    # Re-quantising weights that were already 4-bit costs ~13% NLL with NF4; a broken path costs several times.
    assert nll(quantised) == pytest.approx(nll(gemma), rel=0.25)
    assert nll(quantised) != nll(gemma)


def test_adapter_fingerprint_ignores_the_order_of_target_modules(gemma: LoadedModel, tmp_path: Path) -> None:
    import json
    import shutil

    from harness.backends.hf import adapter_fingerprint

    first = make_adapter(gemma, tmp_path / "first", seed=3)
    second = tmp_path / "second"
    shutil.copytree(first, second)
    config = json.loads((second / "adapter_config.json").read_text())
    config["target_modules"] = list(reversed(config["target_modules"]))
    (second / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_fingerprint(first) == adapter_fingerprint(second)
    config["r"] = 8
    (second / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_fingerprint(first) != adapter_fingerprint(second)


def test_attention_back_end_and_compilation_key_the_cache(gemma: LoadedModel) -> None:
    """Both change bf16 rounding, so both are in the fingerprint; the defaults leave earlier fingerprints as they
    were (no weights load: fingerprints come from the files)."""
    fingerprints = {
        load_model(ModelOptions(**options)).fingerprint
        for options in ({}, {"attention": "eager"}, {"compile": True}, {"attention": "eager", "compile": True})
    }
    assert len(fingerprints) == 4
    assert gemma.fingerprint in fingerprints


def test_auto_attention_on_a_gpu_with_the_cudnn_frontend_is_cudnn(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU where the cuDNN frontend is installed, `auto` loads cudnn and keys the cache as cudnn does; on this
    CPU, as before. No GPU here: the device and the frontend's presence are patched in (no weights load)."""
    from harness.kernels import cudnn_attention

    assert ModelOptions().resolved_attention() == "auto"
    monkeypatch.setattr(ModelOptions, "resolved_device", lambda self: "cuda")
    monkeypatch.setattr(cudnn_attention, "available", lambda: True)
    assert ModelOptions().resolved_attention() == "cudnn"
    assert ModelOptions(attention="sdpa").resolved_attention() == "sdpa"
    auto, cudnn = (load_model(ModelOptions(**options)).fingerprint for options in ({}, {"attention": "cudnn"}))
    assert auto == cudnn
    monkeypatch.setattr(cudnn_attention, "available", lambda: False)
    assert load_model(ModelOptions()).fingerprint != cudnn


def test_eager_attention_scores_like_the_default(gemma: LoadedModel) -> None:
    eager = load_model(ModelOptions(attention="eager"))
    text = ["The committee will meet on Tuesday to review the budget."]
    default_stats, eager_stats = (loglikelihood_rolling(m, text, 64, 32, 1)[0] for m in (gemma, eager))
    assert eager_stats.tokens == default_stats.tokens
    assert eager_stats.nll == pytest.approx(default_stats.nll, rel=1e-4)


def test_auto_attention_never_drops_gemma2s_soft_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 5.17 (the GPU image's) loads Gemma 2 with sdpa by default, and its sdpa ignores the attention
    soft-cap; this version does neither, so 5.17's choice is reproduced by flagging Gemma 2 as sdpa-capable. On a
    tiny random Gemma 2, `attention: auto` must then load another back-end and score as eager attention does."""
    from transformers import AutoModelForCausalLM, Gemma2Config
    from transformers.models.gemma2 import modeling_gemma2

    from harness.backends.hf import _load_weights

    config = Gemma2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, attn_logit_softcapping=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    monkeypatch.setattr(modeling_gemma2.Gemma2PreTrainedModel, "_supports_sdpa", True)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"  # as on 5.17
    ids = torch.randint(1, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    models = {
        a: _load_weights(tmp_path, ModelOptions(name=str(tmp_path), device="cpu", attention=a))
        for a in ("auto", "eager")
    }
    assert models["auto"].config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(models["auto"](ids).logits, models["eager"](ids).logits)


def test_a_damaged_adapter_is_refused_before_any_model_loads(
    tiny_gemma3: Callable[..., torch.nn.Module], tmp_path: Path
) -> None:
    """A truncated safetensors file or a config that does not parse failed mid-evaluation (the weights attach on
    first use); `harness run` now checks every --adapter first and exits 2 naming the file."""
    from typer.testing import CliRunner

    from harness.backends.hf import check_adapter
    from harness.cli import app
    from harness.core.errors import HarnessError

    adapter = tmp_path / "adapter"
    get_peft_model(tiny_gemma3(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    check_adapter(adapter)  # whole: accepted
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(HarnessError, match="damaged weights") as raised:
        check_adapter(adapter)
    assert str(raised.value).startswith(f"{weights}: ")
    result = CliRunner().invoke(app, ["run", "--tasks", "factual_qa", "--adapter", str(adapter)])
    assert result.exit_code == 2 and "damaged weights" in result.output
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(HarnessError, match="its config does not parse"):
        check_adapter(adapter)


def test_sdpa_on_a_soft_capped_model_is_refused(tmp_path: Path) -> None:
    """Gemma 2 soft-caps its attention logits, which sdpa cannot: asked for explicitly, it is a user error rather
    than a model that silently scores differently."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    from harness.backends.hf import ModelOptions, load_model
    from harness.core.errors import HarnessError

    config = Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, head_dim=8, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, attn_logit_softcapping=50.0,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gemma2")
    loaded = load_model(ModelOptions(name=str(tmp_path / "gemma2"), attention="sdpa", device="cpu"))
    with pytest.raises(HarnessError, match="cannot apply this model's attention soft-cap"):
        _ = loaded.model
