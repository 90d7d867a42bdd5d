"""LoRA layers whose product is added by the matmul that computes it (`lora_addmm: true` in the training config).

peft computes `base(x) + lora_B(lora_A(x)) * scaling`: a [tokens x out] LoRA output beside the base output, and in
the backward a scaled copy of that size of the output's gradient. Compiled and checkpointed, a layer's backward
keeps both outputs of each projection apart (the add is fused into their consumers) and the scaled copies too:
in Gemma 3 270M's MLP ten [tokens x intermediate] buffers at once (bench/layer_buffers.py). Here the scale goes
on the rank-r side and `torch.addmm` adds `(lora_A(x) * scaling) @ lora_B^T` onto the base output inside the
matmul: one output per projection, no scaled copies. The same sum up to rounding (and exactly the same product
where the scale is a power of two); the parameters, their names and the saved adapter are peft's own.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def use_lora_addmm(model: Any) -> int:
    """Switch every LoRA linear layer of `model` to the addmm forward; returns how many were switched. The layers
    change class rather than module, all of one base class to one class, so compiled layers still share graphs."""
    from peft.tuners.lora import Linear

    classes: tuple[type, ...] = (Linear,)
    try:  # peft defines its NF4 LoRA layer only where bitsandbytes is installed (the `quant` extra)
        from peft.tuners.lora.bnb import Linear4bit

        classes += (Linear4bit,)
    except ImportError:
        pass
    switched = 0
    for module in model.modules():
        if type(module) in classes:
            module.__class__ = _addmm_class(module.__class__)
            switched += 1
    return switched


@functools.cache
def _addmm_class(lora_class: Any) -> Any:
    def forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        biased = any(layer.bias is not None for layer in self.lora_B.values())
        if self.disable_adapters or self.merged or self.lora_variant or biased or "adapter_names" in kwargs:
            return lora_class.forward(self, x, *args, **kwargs)  # what training never does: peft's own path
        result = self.base_layer(x, *args, **kwargs)
        for name in (n for n in self.active_adapters if n in self.lora_A):
            lora_a, weight = self.lora_A[name], self.lora_B[name].weight
            cast = not torch.is_autocast_enabled()  # under autocast the matmuls pick their own dtype
            inner = lora_a(self.lora_dropout[name](x.to(lora_a.weight.dtype) if cast else x)) * self.scaling[name]
            if cast:
                inner, weight = inner.to(result.dtype), weight.to(result.dtype)
            flat = torch.addmm(result.reshape(-1, result.shape[-1]), inner.reshape(-1, inner.shape[-1]), weight.t())
            result = flat.view(result.shape)
        return result

    return type(f"Addmm{lora_class.__name__}", (lora_class,), {"forward": forward})
