"""LoRA layers whose product is added by the matmul that computes it (`lora_addmm: true` in the training config).

peft computes `base(x) + lora_B(lora_A(x)) * scaling`: a [tokens x out] LoRA output beside the base output, and in
the backward a scaled copy of that size of the output's gradient. Compiled and checkpointed, a layer's backward
keeps both outputs of each projection apart (the add is fused into their consumers) and the scaled copies too:
in Gemma 3 270M's MLP ten [tokens x intermediate] buffers at once (bench/layer_buffers.py). Here the scale goes
on the rank-r side and the LoRA product `(lora_A(x) * scaling) @ lora_B^T` is accumulated into the base output by
a second matmul: one output per projection, no scaled copies. The same sum up to rounding (and exactly the same
product where the scale is a power of two); the parameters, their names and the saved adapter are peft's own.

Where the base layer is a plain or an NF4 linear layer without bias, the whole LoRA linear runs as one operator,
`lora_linear`, opaque to the compiler, and its backward as another: `torch.addmm(base_output, ...)` compiled writes
a new tensor, so inductor copied every base output before the matmul added to it (one device-to-device copy per
projection, forward and recompute: 2.1 ms of a 59 ms step for the 270M, 11 ms of 319 for the 2B shape on an H200,
run 62's profiles); the operator adds in place into the output it has just computed. Where a projection widens its
input (out > in + r: Gemma's gate and up), adding into the output costs more than widening the input: the LoRA
product joins the base matmul as r more columns, `[x | inner] @ [weight | lora_b]^T`, one matmul over a copy of
[tokens x (in + r)] instead of a second pass over [tokens x out] (and in the backward one matmul gives the gradients
of both x and inner). The rank side `inner = x @ (lora_a * scale)^T` is computed inside the operator too, and in
the backward x's two gradients are one matmul and one accumulation into it, not two [tokens x in] tensors and
their sum (0.24 GiB less at the 2B shape's peak, run 75). With LoRA dropout, lora_a reads dropout's copy of x.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

WIDEN = True  # False: every product added into the output (bench/train_speed.py -nowiden compares)


def layout(out: int, width: int, rank: int) -> str:
    """How a projection [width -> out] takes its LoRA product. `input`: as r more input columns,
    `[x | inner] @ [W | B]^T`, where copying the inputs (tokens x (width + r)) moves less than reading and writing
    the output again (tokens x out); in the backward that one weight gives x's and inner's gradients at once.
    `gradient`: added into the output, and in the backward x's gradient is one matmul over
    `[grad | grad @ B] @ [W ; A]`, where copying the output's gradient moves less than reading and writing x's
    gradient again. `plain`: both products added."""
    if WIDEN and out > width + rank:
        return "input"
    if WIDEN and width > out + rank:
        return "gradient"
    return "plain"


def _layout_of(x: torch.Tensor, weight: torch.Tensor, lora_b: torch.Tensor) -> str:
    out, rank = lora_b.shape
    if weight.shape == (out, x.shape[1] + rank):
        return "input"
    return "gradient" if weight.shape == (out + rank, x.shape[1]) else "plain"


@torch.library.custom_op("adapters::lora_linear", mutates_args=())
def lora_linear(
    x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, dropped: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`x @ W^T + inner @ lora_b^T` with `inner = a @ lora_a^T` (a: `dropped`, LoRA dropout's copy of x, where
    given, else x itself), for 2-D x [tokens x in] and lora_a already scaled; returns the sum and `inner` (which the
    backward reads). `weight` is W [out x in] or, laid out as `layout` says, `[W | lora_b]` or `[W ; lora_a]`
    (the caller's copies of the same values; their gradients come through lora_a and lora_b)."""
    inner = torch.mm(x if dropped is None else dropped, lora_a.t())
    kind = _layout_of(x, weight, lora_b)
    if kind == "input":
        return torch.mm(torch.cat([x, inner], dim=1), weight.t()), inner
    dense = weight[: lora_b.shape[0]] if kind == "gradient" else weight
    return torch.mm(x, dense.t()).addmm_(inner, lora_b.t()), inner


@lora_linear.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, dropped: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty((x.shape[0], lora_b.shape[0])), x.new_empty((x.shape[0], lora_a.shape[0]))


@torch.library.custom_op("adapters::lora_linear_backward", mutates_args=())
def lora_linear_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    dropped: torch.Tensor | None,
    inner: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of x, lora_a, lora_b and dropped (empty without dropout) from the sum's. x's two parts are
    one matmul, and one accumulation into it where the layout does not make them one matmul: never two
    [tokens x in] tensors and their sum."""
    kind = _layout_of(x, weight, lora_b)
    out, width = lora_b.shape[0], x.shape[1]
    if kind == "input":
        both = grad @ weight
        grad_x, grad_inner = both[:, :width], both[:, width:].contiguous()
    elif kind == "gradient":
        grad_inner = grad @ lora_b
        grad_x = grad @ weight[:out] if dropped is not None else torch.cat([grad, grad_inner], dim=1) @ weight
    else:
        grad_x, grad_inner = grad @ weight, grad @ lora_b
    grad_a = grad_inner.t() @ (x if dropped is None else dropped)
    grad_b = grad.t() @ inner
    if dropped is not None:
        return grad_x, grad_a, grad_b, grad_inner @ lora_a
    if kind != "gradient":
        grad_x = grad_x.addmm_(grad_inner, lora_a)
    return grad_x, grad_a, grad_b, x.new_empty(0)


@lora_linear_backward.register_fake
def _(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    dropped: torch.Tensor | None,
    inner: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens, width = x.shape
    if _layout_of(x, weight, lora_b) == "input":
        grad_x = x.new_empty((tokens, width + lora_b.shape[1]))[:, :width]
    else:
        grad_x = x.new_empty(x.shape)
    dropped_grad = x.new_empty(0) if dropped is None else torch.empty_like(dropped)
    return grad_x, torch.empty_like(lora_a), torch.empty_like(lora_b), dropped_grad


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    ctx.save_for_backward(*inputs, output[1])


def _backward(ctx: Any, grad: torch.Tensor, grad_inner: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """inner is lora_linear's by-product for its own backward: nothing downstream reads it, so no gradient
    arrives for it (grad_inner)."""
    x, weight, lora_a, lora_b, dropped, inner = ctx.saved_tensors
    grad_x, grad_a, grad_b, grad_dropped = lora_linear_backward(grad, x, weight, lora_a, lora_b, dropped, inner)
    return grad_x, None, grad_a, grad_b, None if dropped is None else grad_dropped


lora_linear.register_autograd(_backward, setup_context=_setup)


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


def _weight(base: Any, dtype: torch.dtype, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor | None:
    """The base layer's weight as a dense matrix in `dtype` laid out for `lora_linear` (`laid_out`), where the
    layer is a plain linear layer or an NF4 one computing in `dtype`, without bias; None for any other layer. An
    NF4 weight on a GPU is dequantized straight into the wider matrix (adapters/nf4.py)."""
    quant_state = getattr(base.weight, "quant_state", None)
    nf4_layer = type(base).__name__ == "Linear4bit" and quant_state is not None
    if getattr(base, "bias", None) is not None or not (type(base) is torch.nn.Linear or nf4_layer):
        return None
    if not nf4_layer:
        return laid_out(base.weight.to(dtype), lora_a, lora_b)
    if base.compute_dtype not in (None, dtype):
        return None
    from adapters import nf4

    kind = layout(base.out_features, base.in_features, lora_a.shape[0])
    right, below = (lora_b.detach() if kind == "input" else None), (lora_a.detach() if kind == "gradient" else None)
    widened = nf4.dequantize(base.weight.data, quant_state, dtype, right, below)
    if widened is not None:
        return widened
    from bitsandbytes.functional import dequantize_4bit

    return laid_out(dequantize_4bit(base.weight.data, quant_state).to(dtype), lora_a, lora_b)


def laid_out(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """W [out x in] as `lora_linear` takes it: `[W | lora_b]`, `[W ; lora_a]` or W alone, as `layout` says (the
    LoRA matrices' values copied in, detached)."""
    kind = layout(weight.shape[0], weight.shape[1], lora_a.shape[0])
    if kind == "input":
        return torch.cat([weight, lora_b.detach()], dim=1)
    return torch.cat([weight, lora_a.detach()]) if kind == "gradient" else weight


@functools.cache
def _addmm_class(lora_class: Any) -> Any:
    def forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        biased = any(layer.bias is not None for layer in self.lora_B.values())
        if self.disable_adapters or self.merged or self.lora_variant or biased or "adapter_names" in kwargs or args:
            return lora_class.forward(self, x, *args, **kwargs)  # what training never does: peft's own path
        active = [n for n in self.active_adapters if n in self.lora_A]
        autocast = torch.is_autocast_enabled(x.device.type)  # under autocast the matmuls pick their own dtype
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        if len(active) == 1 and not kwargs:
            (name,) = active
            lora_a = (self.lora_A[name].weight * self.scaling[name]).to(dtype)
            lora_b = self.lora_B[name].weight.to(dtype)
            weight = _weight(self.base_layer, dtype, lora_a, lora_b)
            if weight is not None:
                flat_x = x.reshape(-1, x.shape[-1]).to(dtype)
                dropout = self.lora_dropout[name]
                dropped = dropout(flat_x) if dropout.training and getattr(dropout, "p", 0) > 0 else None
                flat, _ = lora_linear(flat_x, weight, lora_a, lora_b, dropped)
                return flat.view(*x.shape[:-1], flat.shape[-1])
        products = []
        for name in active:
            lora_a, weight = self.lora_A[name], self.lora_B[name].weight
            inner = lora_a(self.lora_dropout[name](x if autocast else x.to(lora_a.weight.dtype))) * self.scaling[name]
            products.append((inner.reshape(-1, inner.shape[-1]), weight))
        result = self.base_layer(x, **kwargs)
        for inner, weight in products:
            if not autocast:
                inner, weight = inner.to(result.dtype), weight.to(result.dtype)
            flat = torch.addmm(result.reshape(-1, result.shape[-1]), inner, weight.t())
            result = flat.view(result.shape)
        return result

    return type(f"Addmm{lora_class.__name__}", (lora_class,), {"forward": forward})
