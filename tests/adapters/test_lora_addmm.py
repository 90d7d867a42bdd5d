"""`lora_addmm`: LoRA products added inside their matmuls give peft's loss and gradients."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters.config import TrainConfig
from adapters.lora_addmm import laid_out, layout, lora_linear, lora_linear_backward, use_lora_addmm
from adapters.loss import supervised_nll
from adapters.packing import collate
from adapters.tokenize import TokenizedExample


def _batch() -> object:
    rows = [[TokenizedExample(input_ids=[(7 * i + 3 * row) % 500 + 1 for i in range(24)], labels=[5] * 24, line=1)]
            for row in range(2)]  # fmt: skip
    return collate(rows, pad_id=0)


def _random_b(model: torch.nn.Module) -> None:
    """peft starts B at zero, which would leave A without a gradient."""
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(std=0.1)


def _loss_and_gradients(model: torch.nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = supervised_nll(model, _batch())  # type: ignore[arg-type]
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def _assert_same(
    ours: tuple[float, dict[str, torch.Tensor]], peft: tuple[float, dict[str, torch.Tensor]], tol: float
) -> None:
    assert ours[0] == pytest.approx(peft[0], rel=tol)
    assert ours[1].keys() == peft[1].keys() and any("lora_A" in name for name in peft[1])
    for name, grad in peft[1].items():
        relative = float((ours[1][name] - grad).norm() / grad.norm())
        assert relative <= tol, f"{name}: {relative:.1e}"


@pytest.mark.parametrize("alpha", [8, 12])  # scale 2 (a power of two: the same products) and 3
def test_addmm_lora_gives_pefts_loss_and_gradients(tiny_gemma3: Callable[..., torch.nn.Module], alpha: int) -> None:
    """fp32 LoRA (no quantization) on a tiny random Gemma 3 with random B: the addmm forward against peft's on the
    same weights."""
    from peft import LoraConfig, get_peft_model

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        wrapped = get_peft_model(tiny_gemma3(width=64), LoraConfig(r=4, lora_alpha=alpha, target_modules="all-linear"))
        _random_b(wrapped)
        return wrapped.train()

    peft, ours = model(), model()
    switched = use_lora_addmm(ours)
    assert switched == 14  # 7 projections x 2 layers
    _assert_same(_loss_and_gradients(ours), _loss_and_gradients(peft), 1e-5)


def test_addmm_lora_over_nf4_in_the_trainer(tiny_gemma3: Callable[..., torch.nn.Module], tmp_path: Path) -> None:
    """QLoRA as the trainer builds it (NF4 base through bitsandbytes' CPU backend, `lora_addmm: true`) against the
    same config without it; dropout off so that both see the same inputs."""
    from adapters.trainer import build_model

    tiny_gemma3(width=64).save_pretrained(tmp_path / "tiny")
    settings = {"model": str(tmp_path / "tiny"), "quant": "nf4", "device": "cpu", "lora_r": 4, "lora_dropout": 0.0}

    def built(addmm: bool) -> torch.nn.Module:
        model, _ = build_model(TrainConfig(**settings, lora_addmm=addmm))
        torch.manual_seed(1)
        _random_b(model)
        return model.train()

    ours, peft = built(True), built(False)
    assert type(next(m for m in ours.modules() if hasattr(m, "lora_A"))).__name__ == "AddmmLinear4bit"
    with torch.profiler.profile() as profile:
        got = _loss_and_gradients(ours)
    fused = [event for event in profile.key_averages() if event.key == "adapters::lora_linear"]
    assert fused and fused[0].count == 10  # every NF4 projection through it: q, k, v as one; o; gate; up; down
    _assert_same(got, _loss_and_gradients(peft), 1e-5)
    for model, folder in ((ours, "ours"), (peft, "peft")):  # the saved adapter is peft's own
        model.save_pretrained(tmp_path / folder)
    saved = [load_file(tmp_path / folder / "adapter_model.safetensors") for folder in ("ours", "peft")]
    assert saved[0].keys() == saved[1].keys() and all(torch.equal(saved[0][k], saved[1][k]) for k in saved[1])


def test_addmm_lora_under_autocast_takes_the_fused_operator(
    tiny_gemma3: Callable[..., torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the loss runs under bf16 autocast (adapters/loss.py), where the LoRA weights stay fp32: the fused
    operator must be taken there too (a first version fell back to the base layer and addmm under autocast). CPU
    autocast here, NF4 through bitsandbytes' CPU backend: against float32 (no autocast) the fused operator is no
    further off than the unfused addmm or peft's own forward (it rounds a widening projection's output once, where
    they round the base product and then the sum)."""
    import adapters.lora_addmm as lora_addmm
    from adapters.trainer import build_model

    tiny_gemma3(width=64).save_pretrained(tmp_path / "tiny")

    def run(addmm: bool, dtype: str = "bfloat16") -> tuple[float, dict[str, torch.Tensor]]:
        config = TrainConfig(model=str(tmp_path / "tiny"), quant="nf4", device="cpu", dtype=dtype, lora_r=4,
                             lora_dropout=0.0, lora_addmm=addmm)  # fmt: skip
        model, _ = build_model(config)
        torch.manual_seed(1)
        _random_b(model)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            return _loss_and_gradients(model.train())

    with torch.profiler.profile() as profile:
        fused = run(True)
    assert any(event.key == "adapters::lora_linear" for event in profile.key_averages())
    reference, peft = run(False, "float32"), run(False)
    monkeypatch.setattr(lora_addmm, "_dense_base", lambda *args: False)
    unfused = run(True)

    def error(got: tuple[float, dict[str, torch.Tensor]]) -> float:
        return max(float((got[1][k] - want).norm() / want.norm()) for k, want in reference[1].items())

    assert fused[0] == pytest.approx(reference[0], rel=1e-3)
    assert fused[1].keys() == unfused[1].keys() == reference[1].keys()
    assert error(fused) <= min(error(peft), error(unfused)) * 1.1


def test_addmm_lora_in_compiled_checkpointed_layers(tiny_gemma3: Callable[..., torch.nn.Module]) -> None:
    """The configuration `lora_addmm` is for: decoder layers compiled with the partitioner recomputing everything
    (`compile` + `gradient_checkpointing`), on the CPU here (GPU: tests/adapters/test_graphs.py adds CUDA graphs).
    Both models compiled, so that only the LoRA forward differs; the siblings' hand-over traces without a graph
    break."""
    from peft import LoraConfig, get_peft_model

    from adapters.trainer import compile_layers

    def compiled(addmm: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        model = get_peft_model(
            tiny_gemma3(width=64), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        )
        if addmm:
            use_lora_addmm(model)
        compile_layers(model)
        return model.train()

    from torch._dynamo.utils import counters

    counters.clear()
    with torch._functorch.config.patch(activation_memory_budget=0.0):
        ours = compiled(True)
        _assert_same(_loss_and_gradients(ours), _loss_and_gradients(compiled(False)), 1e-5)
    assert not counters["graph_break"]  # q, k, v (and gate, up) handed on as one operator's outputs, traced
    assert all(getattr(module, "_pending", None) is None for module in ours.modules())


def test_kept_projection_outputs_are_not_recomputed(
    tiny_gemma3: Callable[..., torch.nn.Module], tmp_path: Path
) -> None:
    """`keep_projection_outputs` as the trainer builds it (compiled, checkpointed layers, `lora_addmm`; fp32 on the
    CPU): the last layer keeps its down projection's output, so the backward runs the operator once less (the
    profiler's count), with the same loss and gradients as the layers that recompute everything."""
    import torch._inductor.config

    from adapters.trainer import build_model

    tiny_gemma3(width=64).save_pretrained(tmp_path / "tiny")

    def run(layers: int) -> tuple[int, tuple[float, dict[str, torch.Tensor]]]:
        config = TrainConfig(model=str(tmp_path / "tiny"), quant="none", device="cpu", lora_r=4, lora_dropout=0.0,
                             lora_addmm=True, compile=True, gradient_checkpointing=True,
                             keep_projection_outputs=layers)  # fmt: skip
        model, _ = build_model(config)
        torch.manual_seed(1)
        _random_b(model)
        _loss_and_gradients(model.train())  # compiled here: the profiler would count the tracing's calls
        with torch.profiler.profile() as profile:
            got = _loss_and_gradients(model)
        return sum(e.count for e in profile.key_averages() if e.key == "adapters::lora_linear"), got

    with torch._inductor.config.patch(joint_custom_pre_pass=None):  # the trainer sets it: put back after
        (kept_calls, kept), (all_calls, recomputed) = run(1), run(0)
    assert all_calls == 20  # per layer q/k/v as one, o, gate, up, down: forward and recompute
    assert kept_calls == all_calls - 1
    _assert_same(kept, recomputed, 1e-5)


def test_kept_projection_outputs_need_the_compiled_checkpointed_operator() -> None:
    with pytest.raises(ValueError, match="keep_projection_outputs"):
        TrainConfig(keep_projection_outputs=2, compile=True, gradient_checkpointing=True)


def _laid_out_sum(
    weight: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dropped: torch.Tensor | None
) -> torch.Tensor:
    return lora_linear(x, laid_out(weight, a, b), a, b, dropped)[0]


def test_lora_linear_operator_registrations() -> None:
    """The fused operator's and its backward's fake (shape) functions and the autograd formula, as torch.compile
    sees them (`torch.library.opcheck`), and the value against the two products summed, in each layout: widening
    (inputs side by side), narrowing (the product added into the output, x's gradient one matmul over the
    output's gradient side by side), neither, and with LoRA dropout's copy of the input feeding lora_a."""
    torch.manual_seed(0)
    kinds = set()
    for out, dropout in ((2, False), (3, False), (8, False), (2, True), (3, True), (8, True)):
        kinds.add(layout(out, 5, 2))
        shapes = ((6, 5), (out, 5), (2, 5), (out, 2), (6, 5))
        x, weight, lora_a, lora_b, dropped = (torch.randn(shape, dtype=torch.float64) for shape in shapes)
        for tensor in (x, lora_a, lora_b, dropped):
            tensor.requires_grad_()
        inputs = (x, laid_out(weight, lora_a, lora_b), lora_a, lora_b, dropped if dropout else None)
        torch.library.opcheck(lora_linear, inputs)
        result, inner = lora_linear(*inputs)
        expected_inner = (dropped if dropout else x) @ lora_a.T
        assert torch.allclose(inner, expected_inner) and torch.allclose(result, x @ weight.T + inner @ lora_b.T)
        assert torch.autograd.gradcheck(functools.partial(_laid_out_sum, weight), (x, lora_a, lora_b, inputs[4]))
        grad = torch.randn(6, out, dtype=torch.float64)
        saved = [None if t is None else t.detach() for t in (*inputs, inner)]
        torch.library.opcheck(lora_linear_backward, (grad, *saved))  # no gradient of gradients
    assert kinds == {"input", "gradient", "plain"}
