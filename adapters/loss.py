"""Causal-LM loss over supervised positions only, the LM head applied a chunk of rows at a time.

The frozen head's chunks compute their gradient in the forward pass (harness.kernels.headloss), so no more than one
chunk of full-vocabulary logits exists at any time (Gemma's vocabulary is 262k) and none is recomputed.
"""

from __future__ import annotations

from typing import Any

import torch

from adapters.packing import Batch, attention_masks
from adapters.tokenize import IGNORE_INDEX
from harness.kernels import cudnn_attention
from harness.kernels.attention import flex_kwargs
from harness.kernels.headloss import output_head, summed_nll


def supervised_nll(model: Any, batch: Batch, packed: bool | None = None, static: bool = False) -> torch.Tensor:
    """Summed NLL (nats) of the batch's supervised tokens; a scalar tensor with grad where the model has it.

    `packed`: whether a row holds more than one example (then the attention mask is block-diagonal); None looks
    at the batch. `static`: the head runs over every position and unsupervised ones are weighted out, so that no
    shape depends on the labels' values and nothing waits for the GPU (what a CUDA graph needs).

    On a GPU with a bf16 base it runs under bf16 autocast: the LoRA weights stay fp32 (optimizer precision) but
    their matmuls run in bf16, like the base's, instead of casting every activation up to fp32 and back."""
    dtype = model.get_input_embeddings().weight.dtype  # embeddings are never quantized
    bf16 = batch.input_ids.is_cuda and dtype == torch.bfloat16
    packed = batch.packed() if packed is None else packed
    # No autocast cache: a CUDA graph must not keep cast weights that belong to its capture.
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not static):
        decoder, head, softcap = output_head(model)
        implementation = model.config._attn_implementation
        flex = implementation == "flex_attention"
        windowed = implementation == cudnn_attention.NAME  # windows in the kernel: rows of one example need no mask
        masks = None  # one example per row: transformers' causal masks and fast paths
        if packed or static or windowed:
            # Static: the masks are ours, since transformers builds different ones while a CUDA graph is being
            # captured (it cannot read tensors then), which would make the compiled layers recompile mid-capture.
            causal_none = not packed and implementation in ("sdpa", cudnn_attention.NAME)
            masks = attention_masks(model.config, batch.segment_ids, dtype, causal_none, flex, windowed)
        hidden = decoder(
            input_ids=batch.input_ids,
            attention_mask=masks,
            position_ids=batch.position_ids,
            use_cache=False,
            **flex_kwargs(model.config, batch.input_ids.device),
        )[0]
        if static:
            targets = batch.labels[:, 1:].reshape(-1)
            weights = (targets != IGNORE_INDEX).float()
            states = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # the state at p-1 predicts the token at p
            return summed_nll(states, targets.clamp(min=0), head, softcap, weights)
        rows, positions = (batch.labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
        selected = hidden[rows, positions]  # the state at p-1 predicts the token at p
        return summed_nll(selected, batch.labels[rows, positions + 1], head, softcap)
