"""What the runner asks of a model: rolling-window log-likelihoods and batched generation.

The LM head is applied only at positions that carry a loss, a chunk at a time (harness.kernels.headloss): Gemma's
vocabulary is 262k, so full [tokens x vocab] logits would dominate both time and memory.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.backends.hf import LoadedModel
from harness.core.registry import SampleStats
from harness.core.taskspec import GenerationConfig, Windows
from harness.kernels import cudnn_attention
from harness.kernels.attention import flex_kwargs
from harness.kernels.headloss import output_head, token_nll


@dataclass(frozen=True)
class Window:
    """A slice of one text's tokens; targets at local positions >= score_from are scored."""

    text_index: int
    input_ids: list[int]
    score_from: int


def rolling_windows(
    token_ids: Sequence[int], max_length: int, stride: int, text_index: int = 0, scheme: Windows = "strided"
) -> list[Window]:
    """Overlapping windows of at most `max_length` tokens, advancing by `stride`; each token is scored once,
    with as much left context as its window gives. Token 0 (BOS) is context only. `scheme="lm_eval"`:
    lm_eval_windows instead."""
    if scheme == "lm_eval":
        return lm_eval_windows(token_ids, max_length, text_index)
    windows: list[Window] = []
    scored_until = 1
    begin = 0
    while scored_until < len(token_ids):
        begin = min(begin, scored_until - 1)  # every scored token needs its predecessor in the window
        end = min(begin + max_length, len(token_ids))
        windows.append(Window(text_index, list(token_ids[begin:end]), scored_until - begin))
        scored_until = end
        begin += stride
    return windows


def lm_eval_windows(token_ids: Sequence[int], max_length: int, text_index: int = 0) -> list[Window]:
    """lm-evaluation-harness's rolling windows (loglikelihood_rolling): blocks of `max_length` scored tokens, each
    seeing only the token before it and its own block; the last, shorter block keeps up to `max_length` tokens of
    context. A window holds the model's input and its last target, so up to max_length + 1 tokens. Token 0 (BOS)
    is context only."""
    windows: list[Window] = []
    scored, total = 0, len(token_ids) - 1  # targets: every token after BOS
    while scored < total:
        count = min(total - scored, max_length)
        end = scored + count + 1  # one past this block's last target
        begin = max(end - max_length - 1, 0)
        windows.append(Window(text_index, list(token_ids[begin:end]), scored + 1 - begin))
        scored += count
    return windows


_COMPILED_DECODERS: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()


def scoring_decoder(decoder: torch.nn.Module, compile_: bool, graphs: bool = False) -> Any:
    """The decoder stack to score with: under --compile, one torch.compile wrapper per decoder. A wrapper, not the
    modules themselves: generation keeps the plain modules for transformers' own compiled static-cache decoding.
    `graphs` (a GPU): the compiled decoder replays CUDA graphs (mode reduce-overhead), one per batch shape, so that
    the host does not launch its hundreds of kernels per batch; callers keep the shapes few (_scoring_width).

    Batch size and width are marked dynamic where the graph allows it (maybe_mark_dynamic), so that batches of any
    width share one graph. Not `dynamic=True`: that forces a symbolic batch size, on which torch's lowering of flex
    attention (Gemma 2's soft-capped attention) fails."""
    if not compile_:
        return decoder
    if decoder not in _COMPILED_DECODERS:
        _COMPILED_DECODERS[decoder] = torch.compile(decoder, mode="reduce-overhead" if graphs else None)
    compiled = _COMPILED_DECODERS[decoder]

    def call(input_ids: torch.Tensor, attention_mask: Any, **kwargs: Any) -> Any:
        for dim in (0, 1):
            torch._dynamo.maybe_mark_dynamic(input_ids, dim)
        return compiled(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    return call


def _scoring_width(width: int, config: Any, graphs: bool) -> int:
    """A batch's padded width: with CUDA graphs rounded up to a multiple of 64 (at most the model's positions), so
    that batches of any texts replay a few recorded graphs instead of recording one per width."""
    if not graphs:
        return width
    rounded = -(-width // 64) * 64
    return max(width, min(rounded, getattr(config, "max_position_embeddings", None) or rounded))


def _causal_masks(config: Any) -> Any:
    """The decoder's mask argument for rows padded at the end: None (transformers builds the causal and windowed
    masks), or, for a model with layer types under harness.kernels.cudnn_attention, no mask for any of them: those
    kernels apply the sliding window themselves and skip the blocks outside it, where a mask tensor would make them
    compute every block. (A model without layer types takes no such mapping; its causal mask is None anyway.)"""
    layer_types = getattr(config, "layer_types", None)
    if config._attn_implementation != cudnn_attention.NAME or not layer_types:
        return None
    return dict.fromkeys(set(layer_types))


def _window_nll(
    model: torch.nn.Module, pad_id: int, device: torch.device, windows: Sequence[Window], compile_: bool = False
) -> torch.Tensor:
    """Summed NLL of each window's scored tokens (float64, on the device), run as one right-padded batch. Nothing
    here waits for the device: the result is read back by the caller."""
    decoder, head, softcap = output_head(model)
    graphs = compile_ and device.type == "cuda"
    lengths = torch.tensor([len(w.input_ids) for w in windows])
    score_from = torch.tensor([w.score_from for w in windows])
    width = _scoring_width(int(lengths.max()), model.config, graphs)
    input_ids = torch.tensor([w.input_ids + [pad_id] * (width - len(w.input_ids)) for w in windows])
    columns = torch.arange(width)
    in_text = columns[None, :] < lengths[:, None]
    # No padding mask: the rows are padded at the end, and causal attention alone keeps every real position from
    # seeing the padding after it. Without one, attention takes the fused causal (and windowed) kernels.
    input_ids = _to_device(input_ids, device)
    tiles = flex_kwargs(model.config, device)
    masks = _causal_masks(model.config)
    hidden = scoring_decoder(decoder, compile_, graphs)(input_ids=input_ids, attention_mask=masks, **tiles)[0]
    # Scored positions found on the host: a nonzero() on the device would wait for the decoder to finish.
    scored = in_text & (columns[None, :] >= score_from[:, None])
    rows, positions = (_to_device(index, device) for index in scored.nonzero(as_tuple=True))
    # The hidden state at position p-1 predicts the token at p.
    nll = token_nll(hidden[rows, positions - 1], input_ids[rows, positions], head, softcap)
    return torch.zeros(len(windows), dtype=torch.float64, device=device).index_add_(0, rows, nll.double())


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting: copying from pageable memory would make the host wait until
    the device has finished all the work queued before the copy, so a GPU copy goes through pinned memory."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def encode_for_scoring(loaded: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text to score, with exactly one BOS in front (one batched tokenizer call)."""
    tokenizer = loaded.tokenizer
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + ids for ids in tokenizer(list(texts), add_special_tokens=False).input_ids] if texts else []


def loglikelihood_rolling(
    loaded: LoadedModel,
    texts: Sequence[str],
    max_length: int,
    stride: int,
    batch_size: int,
    windows: Windows = "strided",
) -> list[SampleStats]:
    """Summed NLL over all tokens of each text (rolling windows past `max_length`), length-sorted batches."""
    return queue_rolling(loaded, texts, max_length, stride, batch_size, windows)()


def queue_rolling(
    loaded: LoadedModel,
    texts: Sequence[str],
    max_length: int,
    stride: int,
    batch_size: int,
    scheme: Windows = "strided",
) -> Callable[[], list[SampleStats]]:
    """loglikelihood_rolling in two halves: this queues every batch on the device and returns a function that
    waits for the results, so that the caller can prepare (and queue) more work while the device computes."""
    windows = [
        window
        for index, token_ids in enumerate(encode_for_scoring(loaded, texts))
        for window in rolling_windows(token_ids, max_length, stride, index, scheme)
    ]
    windows.sort(key=lambda w: len(w.input_ids), reverse=True)
    pad_id, device, compile_ = loaded.tokenizer.pad_token_id, loaded.device, loaded.options.compile
    with torch.inference_mode(), loaded.engaged() as model:
        batches = [windows[start : start + batch_size] for start in range(0, len(windows), batch_size)]
        nll = [_window_nll(model, pad_id, device, batch, compile_) for batch in batches]

    def results() -> list[SampleStats]:
        nll_sums = [0.0] * len(texts)
        token_counts = [0] * len(texts)
        window_nll = torch.cat(nll).tolist() if nll else []  # the one wait for the device
        for window, value in zip(windows, window_nll, strict=True):
            nll_sums[window.text_index] += value
            token_counts[window.text_index] += len(window.input_ids) - window.score_from
        return [
            SampleStats(nll=nll_sums[i], tokens=token_counts[i], bytes=len(text.encode("utf-8")))
            for i, text in enumerate(texts)
        ]

    return results


def _stop_token_ids(loaded: LoadedModel) -> list[int]:
    tokenizer = loaded.tokenizer
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return sorted(i for i in ids if i is not None)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to the first stop sequence."""
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]


@torch.inference_mode()
def generate(loaded: LoadedModel, prompts: Sequence[str], config: GenerationConfig, chat: bool) -> list[str]:
    """Continuations of one batch of prompts: left-padded, greedy unless temperature > 0 (then seeded)."""
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    # Compiled decoding (a GPU and --compile): a static KV cache, which transformers decodes through a compiled,
    # CUDA-graphed step. Prompt widths rounded up to a multiple of 64 keep the number of cache shapes, and so of
    # compilations, small.
    static = loaded.options.compile and loaded.device.type == "cuda"
    encoded = tokenizer(
        list(prompts),
        return_tensors="pt",
        padding=True,
        add_special_tokens=not chat,  # a chat-rendered prompt already starts with <bos>; a plain one gets it here
        pad_to_multiple_of=64 if static else None,
    )
    decoding: dict[str, Any] = {"cache_implementation": "static"} if static else {}
    if config.temperature > 0:
        torch.manual_seed(config.seed)
        decoding |= {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k or None}
    with loaded.engaged() as model:
        output_ids = model.generate(
            **encoded.to(loaded.device),
            max_new_tokens=config.max_new_tokens,
            do_sample=config.temperature > 0,
            eos_token_id=_stop_token_ids(loaded),
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=config.stop or None,
            tokenizer=tokenizer if config.stop else None,
            **decoding,
        )
    new_tokens = output_ids[:, encoded["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [cut_at_stop(text, config.stop).strip() for text in texts]
