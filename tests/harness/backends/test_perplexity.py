"""Perplexity on the real embedded Gemma against a plain PyTorch computation (full logits, cross-entropy)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness.backends.hf import LoadedModel
from harness.backends.hf_requests import encode_for_scoring, lm_eval_windows, loglikelihood_rolling, rolling_windows

# lm-evaluation-harness 0.4.13's own windows (lm_eval.utils.get_rolling_token_windows + make_disjoint_window,
# prefix token -1, context_len 1 as its HFLM uses them) for texts of tokens 0..length-1.
LM_EVAL_WINDOWS = json.loads((Path(__file__).parents[2] / "fixtures" / "lm_eval" / "rolling_windows.json").read_text())

TEXTS = [
    "The kettle clicked off just as the rain began.",
    "Bicycles are among the most efficient machines ever built, converting effort into motion.",
    "Tides are caused mainly by the gravitational pull of the moon.",
    "A short one.",
    "Maps are always simplifications: a map of the underground shows stations evenly spaced along lines.",
    "Sleep is not a passive state; the brain cycles through several stages during the night.",
    "Honeybees dance.",
    "Good teachers rarely give the answer straight away, they ask a question that points the right way.",
    "Ünïcödé text — with dashes, “quotes” and emoji 🙂 counts bytes, not characters.",
]


@torch.inference_mode()
def plain_nll(gemma: LoadedModel, token_ids: list[int]) -> float:
    """Reference: one forward pass with full logits, summed cross-entropy of every token after the first."""
    ids = torch.tensor([token_ids])
    logits = gemma.model(input_ids=ids).logits[0, :-1].double()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))


@torch.inference_mode()
def plain_rolling_nll(gemma: LoadedModel, token_ids: list[int], max_length: int, stride: int) -> float:
    """Reference for texts past the context: the documented HF sliding-window loop, one window at a time."""
    total, scored_until = 0.0, 1
    for begin in range(0, len(token_ids), stride):
        end = min(begin + max_length, len(token_ids))
        ids = torch.tensor([token_ids[begin:end]])
        logits = gemma.model(input_ids=ids).logits[0, :-1].double()
        losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        total += float(losses[scored_until - begin - 1 :].sum())
        scored_until = end
        if end == len(token_ids):
            break
    return total


@pytest.mark.parametrize("batch_size", [1, 8])
def test_perplexity_equals_plain_pytorch(gemma: LoadedModel, batch_size: int) -> None:
    ours = loglikelihood_rolling(gemma, TEXTS, max_length=1024, stride=512, batch_size=batch_size)
    for text, stats in zip(TEXTS, ours, strict=True):
        token_ids = encode_for_scoring(gemma, [text])[0]
        assert stats.tokens == len(token_ids) - 1
        assert stats.bytes == len(text.encode("utf-8"))
        assert stats.nll == pytest.approx(plain_nll(gemma, token_ids), rel=1e-5)


def test_exactly_one_bos(gemma: LoadedModel) -> None:
    token_ids = encode_for_scoring(gemma, [TEXTS[0]])[0]
    assert token_ids[0] == gemma.tokenizer.bos_token_id
    assert token_ids.count(gemma.tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("batch_size", [1, 8])
def test_rolling_windows_equal_plain_sliding_window_loop(gemma: LoadedModel, batch_size: int) -> None:
    long_texts = [" ".join(TEXTS), " ".join(reversed(TEXTS))]
    ours = loglikelihood_rolling(gemma, long_texts, max_length=48, stride=20, batch_size=batch_size)
    for text, stats in zip(long_texts, ours, strict=True):
        token_ids = encode_for_scoring(gemma, [text])[0]
        assert len(token_ids) > 100  # several windows
        assert stats.tokens == len(token_ids) - 1
        assert stats.nll == pytest.approx(plain_rolling_nll(gemma, token_ids, 48, 20), rel=1e-5)


@pytest.mark.parametrize(
    ("n_tokens", "max_length", "stride"), [(2, 4, 2), (10, 4, 2), (10, 4, 4), (37, 8, 3), (8, 8, 8)]
)
def test_rolling_windows_score_every_token_once(n_tokens: int, max_length: int, stride: int) -> None:
    token_ids = list(range(n_tokens))
    windows = rolling_windows(token_ids, max_length, stride)
    scored = [w.input_ids[p] for w in windows for p in range(w.score_from, len(w.input_ids))]
    assert scored == token_ids[1:]
    assert all(len(w.input_ids) <= max_length and w.score_from >= 1 for w in windows)


@pytest.mark.parametrize("case", LM_EVAL_WINDOWS, ids=lambda c: f"{c['length']}-{c['max_length']}")
def test_lm_eval_windows_are_lm_evaluation_harness_windows(case: dict) -> None:
    token_ids = [-1, *range(case["length"])]  # BOS, then the text's tokens
    windows = lm_eval_windows(token_ids, case["max_length"])
    assert [[w.input_ids[: w.score_from], w.input_ids[w.score_from :]] for w in windows] == case["windows"]
    assert all(len(w.input_ids) - 1 <= case["max_length"] for w in windows)  # the model's input fits


@torch.inference_mode()
def test_lm_eval_windows_score_as_plain_pytorch_and_differ_from_strided(gemma: LoadedModel) -> None:
    text = " ".join(TEXTS)
    token_ids = encode_for_scoring(gemma, [text])[0]
    (ours,) = loglikelihood_rolling(gemma, [text], max_length=48, stride=48, batch_size=4, windows="lm_eval")
    reference = 0.0
    for window in lm_eval_windows(token_ids, 48):  # each window's model input alone, full logits
        ids = torch.tensor([window.input_ids])
        logits = gemma.model(input_ids=ids[:, :-1]).logits[0].double()
        losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        reference += float(losses[window.score_from - 1 :].sum())
    assert ours.tokens == len(token_ids) - 1
    assert ours.nll == pytest.approx(reference, rel=1e-5)
    (strided,) = loglikelihood_rolling(gemma, [text], max_length=48, stride=48, batch_size=4)
    assert strided.tokens == ours.tokens and strided.nll != pytest.approx(ours.nll, rel=1e-4)


def test_lm_eval_windows_take_no_stride() -> None:
    from harness.core.taskspec import PerplexityConfig

    assert PerplexityConfig(windows="lm_eval").identity()["windows"] == "lm_eval"
    assert "windows" not in PerplexityConfig().identity()  # older results keep their keys
    with pytest.raises(ValueError, match="lm_eval windows do not stride"):
        PerplexityConfig(windows="lm_eval", stride=128)


@pytest.mark.slow
def test_compiled_scoring_under_flex_attention_matches_eager() -> None:
    """--compile with flex attention (how Gemma 2's soft-capped attention runs fast) on padded batches of changing
    width and size: the compiled decoder gives the eager sums. A tiny random-weight Gemma 2 built from its config
    (no Gemma 2 weights are embedded); compiling the whole decoder with a symbolic batch size fails in torch's
    flex-attention lowering, which scoring_decoder avoids."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    from harness.backends.hf_requests import Window, _window_nll

    config = Gemma2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=16)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="flex_attention").eval()
    generator = torch.Generator().manual_seed(0)
    for lengths in ([40, 33, 40], [56, 50], [24, 17, 9]):
        windows = [Window(0, torch.randint(1, 512, (n,), generator=generator).tolist(), 1) for n in lengths]
        with torch.inference_mode():
            eager = _window_nll(model, 0, torch.device("cpu"), windows, compile_=False)
            compiled = _window_nll(model, 0, torch.device("cpu"), windows, compile_=True)
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_padded_batch_without_a_mask_equals_each_window_alone(
    attention: str, tiny_gemma3: Callable[..., torch.nn.Module]
) -> None:
    """Rows padded at the end go in without a padding mask: causal attention alone must keep the padding out of
    every scored position, past the sliding window too (rows of 40, 33 and 9 tokens against a 16-token window)."""
    from harness.backends.hf_requests import Window, _window_nll

    model, cpu = tiny_gemma3(attention, width=64), torch.device("cpu")
    generator = torch.Generator().manual_seed(1)
    rows = [(40, 1), (33, 20), (9, 3)]  # (tokens, first scored position)
    windows = [Window(0, torch.randint(1, 512, (n,), generator=generator).tolist(), s) for n, s in rows]
    with torch.inference_mode():
        batched = _window_nll(model, 0, cpu, windows)
        alone = torch.cat([_window_nll(model, 0, cpu, [window]) for window in windows])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    assert bool((batched > 0).all())


def test_scoring_width_rounds_up_only_for_cuda_graphs() -> None:
    from types import SimpleNamespace

    from harness.backends.hf_requests import _scoring_width

    config = SimpleNamespace(max_position_embeddings=1040)
    assert [_scoring_width(w, config, graphs=True) for w in (1, 64, 65, 1000, 1030, 1050)] == [
        64,
        64,
        128,
        1024,
        1040,
        1050,
    ]
    assert _scoring_width(1000, config, graphs=False) == 1000
    assert _scoring_width(1000, SimpleNamespace(), graphs=True) == 1024


def test_causal_masks_leave_windows_to_the_cudnn_kernels() -> None:
    """Under attention: cudnn no layer type gets a mask (its kernels apply the window); otherwise transformers
    builds the causal and windowed masks itself."""
    from types import SimpleNamespace

    from harness.backends.hf_requests import _causal_masks
    from harness.kernels import cudnn_attention

    layer_types = ["sliding_attention", "sliding_attention", "full_attention"]
    cudnn = SimpleNamespace(_attn_implementation=cudnn_attention.NAME, layer_types=layer_types)
    assert _causal_masks(cudnn) == {"sliding_attention": None, "full_attention": None}
    assert _causal_masks(SimpleNamespace(_attn_implementation="sdpa", layer_types=layer_types)) is None
    assert _causal_masks(SimpleNamespace(_attn_implementation=cudnn_attention.NAME)) is None  # e.g. Llama
