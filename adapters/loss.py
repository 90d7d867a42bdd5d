"""Causal-LM loss over supervised positions only, the LM head applied a chunk of rows at a time.

The frozen head's chunks compute their gradient in the forward pass (harness.headloss), so no more than one
chunk of full-vocabulary logits exists at any time (Gemma's vocabulary is 262k) and none is recomputed.
"""

from __future__ import annotations

from typing import Any

import torch

from adapters.packing import Batch, attention_masks
from adapters.tokenize import IGNORE_INDEX
from harness.compute import output_head
from harness.headloss import summed_nll


def supervised_nll(model: Any, batch: Batch) -> torch.Tensor:
    """Summed NLL (nats) of the batch's supervised tokens; a scalar tensor with grad where the model has it.

    On a GPU with a bf16 base it runs under bf16 autocast: the LoRA weights stay fp32 (optimizer precision) but
    their matmuls run in bf16, like the base's, instead of casting every activation up to fp32 and back."""
    dtype = model.get_input_embeddings().weight.dtype  # embeddings are never quantized
    bf16 = batch.input_ids.is_cuda and dtype == torch.bfloat16
    with torch.autocast(device_type=batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        return _supervised_nll(model, batch, dtype)


def _supervised_nll(model: Any, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    decoder, head, softcap = output_head(model)
    # One example per row and no padding: plain causal attention, which lets sdpa take its fused kernels.
    single = bool((batch.segment_ids == 1).all())
    masks = None if single else attention_masks(model.config, batch.segment_ids, dtype)
    hidden = decoder(input_ids=batch.input_ids, attention_mask=masks, position_ids=batch.position_ids, use_cache=False)[
        0
    ]
    rows, positions = (batch.labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    positions = positions + 1
    selected = hidden[rows, positions - 1]  # the state at p-1 predicts the token at p
    return summed_nll(selected, batch.labels[rows, positions], head, softcap)
