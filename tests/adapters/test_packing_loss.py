"""Formatting, masks and packing on the real embedded Gemma: a packed batch gives the same per-example losses
as the examples run one by one, and the chunked loss equals full-logits cross-entropy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from adapters.formats import Example, Turn
from adapters.loss import supervised_nll
from adapters.packing import Batch, collate, pack
from adapters.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example
from harness.backends.hf import LoadedModel

EXAMPLES = [
    Example((Turn("user", "What is the capital of France?"), Turn("model", "Paris.")), 1),
    Example((Turn("user", "Say hello in Spanish."), Turn("model", "Hola! ¿Qué tal?")), 2),
    Example(
        (Turn("user", "Hi"), Turn("model", "Hello."), Turn("user", "Count to three."), Turn("model", "1, 2, 3")), 3
    ),
    Example((Turn("text", "Glaciers move slowly but relentlessly."),), 4),
]


@pytest.fixture(scope="module")
def tokenized(gemma: LoadedModel) -> list[TokenizedExample]:
    return [tokenize_example(example, gemma.tokenizer, max_seq_len=256) for example in EXAMPLES]


def test_prompt_renders_like_the_inference_chat_template(gemma: LoadedModel, tokenized: list[TokenizedExample]) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = gemma.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = gemma.tokenizer(prompt, add_special_tokens=False).input_ids
    first = tokenized[0]
    assert first.input_ids[: len(prompt_ids)] == prompt_ids
    assert first.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    response = gemma.tokenizer.decode([t for t in first.labels if t != IGNORE_INDEX])
    assert response == "Paris.<end_of_turn>\n"
    assert first.input_ids.count(gemma.tokenizer.bos_token_id) == 1


def test_multi_turn_supervises_every_model_turn(gemma: LoadedModel, tokenized: list[TokenizedExample]) -> None:
    labels = tokenized[2].labels
    supervised_text = gemma.tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert supervised_text == "Hello.<end_of_turn>\n1, 2, 3<end_of_turn>\n"


def test_train_on_prompt_supervises_all_but_bos(gemma: LoadedModel) -> None:
    example = tokenize_example(EXAMPLES[0], gemma.tokenizer, 256, train_on_prompt=True)
    assert example.labels[0] == IGNORE_INDEX and example.labels[1:] == example.input_ids[1:]


def test_truncation_that_leaves_no_response_is_an_error(gemma: LoadedModel) -> None:
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError, match="max_seq_len"):
        tokenize_example(EXAMPLES[0], gemma.tokenizer, max_seq_len=8)


def only_segment(example: TokenizedExample, keep: bool) -> TokenizedExample:
    return example if keep else dataclasses.replace(example, labels=[IGNORE_INDEX] * len(example.labels))


@torch.no_grad()
def test_packed_batch_gives_the_same_per_example_losses(gemma: LoadedModel, tokenized: list[TokenizedExample]) -> None:
    pad_id = gemma.tokenizer.pad_token_id
    alone = [float(supervised_nll(gemma.model, collate([[example]], pad_id))) for example in tokenized]
    (bin_,) = pack(tokenized, max_seq_len=512)
    packed = [
        float(supervised_nll(gemma.model, collate([[only_segment(tokenized[i], i == target) for i in bin_]], pad_id)))
        for target in range(len(tokenized))
    ]
    assert packed == pytest.approx(alone, rel=1e-4)
    # And padding: the examples as a right-padded batch of separate rows.
    padded = collate([[example] for example in tokenized], pad_id)
    assert float(supervised_nll(gemma.model, padded)) == pytest.approx(sum(alone), rel=1e-4)
    # And the CUDA graphs' static loss (every position, weighted) on a fixed shape, packed and padded.
    packed_rows = collate([[tokenized[i] for i in bin_], [tokenized[0]]], pad_id, shape=(3, 200))
    static = float(supervised_nll(gemma.model, packed_rows, static=True))
    assert static == pytest.approx(sum(alone) + alone[0], rel=1e-4)
    assert float(supervised_nll(gemma.model, collate([[e] for e in tokenized], pad_id, (4, 64)), static=True)) == (
        pytest.approx(sum(alone), rel=1e-4)
    )


@torch.no_grad()
def test_chunked_loss_equals_full_logits_cross_entropy(gemma: LoadedModel, tokenized: list[TokenizedExample]) -> None:
    example = tokenized[1]
    ids = torch.tensor([example.input_ids])
    logits = gemma.model(input_ids=ids).logits[0, :-1]
    labels = torch.tensor(example.labels[1:])
    # The reference's log-softmax in float64: in fp32, its sums over the 262k logits were 1.1e-5 off on an AVX2 CPU
    # (the two-stage log-sum-exp of the chunked loss is not).
    reference = torch.nn.functional.cross_entropy(logits.double(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    assert float(supervised_nll(gemma.model, collate([[example]], gemma.tokenizer.pad_token_id))) == pytest.approx(
        float(reference), rel=1e-6
    )


def test_pack_respects_the_length_budget() -> None:
    examples = [TokenizedExample([1] * n, [1] * n, i) for i, n in enumerate([5, 3, 7, 2, 6, 1])]
    bins = pack(examples, max_seq_len=8)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum(len(examples[i].input_ids) for i in b) <= 8 for b in bins)
    assert len(bins) == 3


def test_fused_head_gradients_match_full_logits_autograd(tokenized: list[TokenizedExample]) -> None:
    """The trainer's loss (frozen head, gradient computed in the forward pass chunk by chunk) against autograd:
    through the same decoder (a trainable head takes the autograd path) the gradients differ only by where the
    1/7 scale is rounded (bit for bit unscaled), and against HF's own forward with full [tokens x vocab] logits,
    whose padding mask differs from the trainer's block-diagonal one, by fp32 noise. A second, fresh copy of the
    real model: LoRA layers are injected in place, and the shared fixture must stay bare."""
    from peft import LoraConfig, get_peft_model

    from harness.backends.hf import ModelOptions, load_model

    loaded = load_model(ModelOptions())
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(loaded.model, lora)
    batch = collate([[tokenized[1]], [tokenized[0]]], loaded.tokenizer.pad_token_id)
    head = model.get_base_model().get_output_embeddings()

    def lora_grads(loss_fn: Callable[[], torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        (loss / 7).backward()  # a scale, as the trainer divides by the step's supervised tokens
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}

    def hf_full_logits() -> torch.Tensor:
        logits = model(input_ids=batch.input_ids, attention_mask=(batch.segment_ids > 0).long()).logits[:, :-1]
        flat_targets = batch.labels[:, 1:].reshape(-1)
        flat_logits = logits.reshape(-1, logits.shape[-1])
        return torch.nn.functional.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")

    fused_loss, fused = lora_grads(lambda: supervised_nll(model, batch))
    static_loss, static = lora_grads(lambda: supervised_nll(model, batch, static=True))  # as CUDA graphs run it
    head.weight.requires_grad_(True)
    autograd_loss, autograd = lora_grads(lambda: supervised_nll(model, batch))
    head.weight.requires_grad_(False)
    hf_loss, hf = lora_grads(hf_full_logits)

    assert len(fused) == 2 * 7 * model.config.num_hidden_layers  # A and B of every linear layer
    assert fused_loss == autograd_loss and fused_loss == pytest.approx(hf_loss, rel=1e-5)
    assert static_loss == pytest.approx(fused_loss, rel=1e-6)
    for name, grad in fused.items():
        # Element by element, thousands differ by more than 1e-4 relative on an AVX-512/AMX CPU where sums cancel
        # (the static loss's matmuls have other shapes, so other fp32 summation orders); over a tensor, fp32 noise.
        to_static = float((static[name] - grad).norm() / grad.norm())
        assert to_static < 2e-5, f"{name}: {to_static:.2e} from the static loss's gradient"  # measured: 5.8e-6
        to_autograd = float((grad - autograd[name]).norm() / autograd[name].norm())
        assert to_autograd < 2e-5, f"{name}: {to_autograd:.2e} from autograd's gradient"  # measured: at most 8.5e-6
        relative = float((grad - hf[name]).norm() / hf[name].norm())
        assert relative < 1e-4, f"{name}: {relative:.2e} from HF's gradient"  # measured: at most 4.3e-5


def _example(length: int, seed: int) -> TokenizedExample:
    ids = torch.randint(1, 512, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
    return TokenizedExample(ids, [IGNORE_INDEX] * 3 + ids[3:], seed)


def test_flex_block_masks_give_the_dense_masks_losses(tiny_gemma3: Callable[..., torch.nn.Module]) -> None:
    """Flex attention's BlockMasks (what a CUDA-graphed step on flex attention gets) against the 4D mask tensors,
    on static batches: packed and padded, and one example per row (the sliding layer still masked). Head size 32:
    on an AVX2 CPU (no AVX-512) torch 2.13's compiled CPU flex attention gave wrong outputs at head sizes 8 and 16
    for 40-token rows (max error 1.1-1.9 against sdpa, where head sizes 24-256 agree to 1e-6; Gemma's is 256)."""
    model = tiny_gemma3(width=64)
    packed = collate([[_example(12, 0), _example(21, 1)], [_example(35, 2)]], pad_id=0, shape=(2, 40))
    single = collate([[_example(33, 3)], [_example(40, 4)]], pad_id=0, shape=(2, 40))
    with torch.no_grad():
        dense = [float(supervised_nll(model, batch, static=True)) for batch in (packed, single)]
        model.set_attn_implementation("flex_attention")
        flex = [float(supervised_nll(model, batch, static=True)) for batch in (packed, single)]
        one_segment = dataclasses.replace(packed, segment_ids=torch.ones_like(packed.segment_ids))
        leaky = float(supervised_nll(model, one_segment, static=True))  # the examples see each other
        model.config.sliding_window = 64
        windowless = float(supervised_nll(model, packed, static=True))  # the 35-token row sees past 16 tokens
    assert flex == pytest.approx(dense, rel=1e-5)
    assert leaky != pytest.approx(dense[0], rel=1e-5)  # both changes matter: the comparisons above can fail
    assert windowless != pytest.approx(dense[0], rel=1e-5)


def test_flex_kernel_options_reach_the_attention_kernel(
    monkeypatch: pytest.MonkeyPatch, tiny_gemma3: Callable[..., torch.nn.Module]
) -> None:
    """The tuned kernel options (harness.kernels.attention, GPU-only) travel from the training loss and from perplexity
    scoring through transformers' decoder to flex attention's call. On this CPU none are tuned, so the options are
    forced and the call is observed (and passed on without them: CPU flex attention has no Triton tiles to set)."""
    from transformers.integrations import flex_attention as hf_flex

    import harness.kernels.attention
    from harness.backends.hf_requests import Window, _window_nll

    options = {"fwd_num_warps": 8}
    seen: list[object] = []
    original = hf_flex.compile_friendly_flex_attention

    def observed(*args: object, kernel_options: object = None, **kwargs: object) -> object:
        seen.append(kernel_options)
        return original(*args, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", observed)
    model = tiny_gemma3()
    model.set_attn_implementation("flex_attention")
    with torch.no_grad():
        _window_nll(model, 0, torch.device("cpu"), [Window(0, list(range(1, 21)), 1)])
        assert seen == [None, None]  # not tuned for this device: torch's defaults
        monkeypatch.setattr(harness.kernels.attention, "flex_kernel_options", lambda config, device: options)
        supervised_nll(model, collate([[_example(20, 5)]], pad_id=0), static=True)
        _window_nll(model, 0, torch.device("cpu"), [Window(0, list(range(1, 21)), 1), Window(1, [3, 4, 5], 1)])
    assert seen == [None, None] + [options] * 4  # both layers, the loss then a padded scoring batch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention's backward needs a CUDA device")
def test_flex_gradients_equal_sdpas(tiny_gemma3: Callable[..., torch.nn.Module]) -> None:
    """Every parameter's gradient through flex attention against sdpa with mask tensors, in fp32 (in bf16 the
    kernels' rounding differs by about 1% per tensor on a model this small), static and not, on packed rows and on
    rows of one example each. GPU only: flex attention has no backward on a CPU."""

    def gradients(implementation: str, batch: Batch, static: bool) -> dict[str, torch.Tensor]:
        model = tiny_gemma3().to("cuda", torch.float32).train()
        model.set_attn_implementation(implementation)
        supervised_nll(model, batch.to(torch.device("cuda")), static=static).backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    single = collate([[_example(20, 0)], [_example(33, 1)]], pad_id=0, shape=(2, 40))
    packed = collate([[_example(12, 0), _example(21, 1)], [_example(35, 2)]], pad_id=0, shape=(2, 40))
    for batch in (single, packed):
        reference = gradients("sdpa", batch, static=True)
        for static in (True, False):
            for name, grad in gradients("flex_attention", batch, static).items():
                relative = float((grad - reference[name]).norm() / reference[name].norm())
                assert relative < 1e-4, f"{name}: {relative:.1e}"  # measured: at most 1.2e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN's kernels need a CUDA device")
def test_cudnn_loss_and_gradients_follow_sdpas(tiny_gemma3: Callable[..., torch.nn.Module]) -> None:
    """The loss and every parameter's gradient with `attention: cudnn` (the sliding window in cuDNN's kernel, no
    mask tensor) against sdpa with mask tensors, both in bf16 (cuDNN takes no fp32), static and not; packed rows
    run sdpa with their masks under cudnn too."""
    from harness.kernels import cudnn_attention

    if not cudnn_attention.available():
        pytest.skip("needs the cuDNN frontend (the cudnn extra)")

    def run(implementation: str, batch: Batch, static: bool) -> tuple[float, dict[str, torch.Tensor]]:
        model = tiny_gemma3().to("cuda", torch.bfloat16).train()
        model.set_attn_implementation(implementation)
        nll = supervised_nll(model, batch.to(torch.device("cuda")), static=static)
        nll.backward()
        return float(nll), {name: p.grad.float() for name, p in model.named_parameters() if p.grad is not None}

    single = collate([[_example(20, 0)], [_example(33, 1)]], pad_id=0, shape=(2, 40))
    packed = collate([[_example(12, 0), _example(21, 1)], [_example(35, 2)]], pad_id=0, shape=(2, 40))
    for batch in (single, packed):
        loss, reference = run("sdpa", batch, static=True)
        for static in (True, False):
            got_loss, got = run(cudnn_attention.register(), batch, static)
            assert got_loss == pytest.approx(loss, rel=1e-2)
            for name, grad in got.items():
                relative = float((grad - reference[name]).norm() / reference[name].norm())
                assert relative < 5e-2, f"{name}: {relative:.1e}"
