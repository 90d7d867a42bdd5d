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
run 62's profiles); the operator adds in place into the output it has just computed. The weight comes laid out
for the cheaper of two widenings (`layout`): where a projection widens its input (Gemma's gate and up), the LoRA
product joins the base matmul as r more columns, `[x | inner] @ [W | lora_b]^T` (a copy of [tokens x (in + r)]
instead of a second pass over [tokens x out]; in the backward one matmul gives the gradients of both x and inner);
where it narrows (down, q, k, v), x's gradient is one matmul, `[grad | grad @ lora_b] @ [W ; lora_a]`, instead of
a second pass over [tokens x in]. NF4 weights are dequantized straight into that wider matrix on a GPU
(harness/kernels/nf4.py). The rank side `inner = x @ (lora_a * scale)^T` is computed inside the operator too, and in the
backward x's two gradients are never two [tokens x in] tensors and their sum (0.24 GiB less at the 2B shape's
peak, run 75). The projections of one input (`SIBLINGS`) run as one operator. With LoRA dropout, lora_a reads
dropout's copy of x.
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
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    dropped: torch.Tensor | None,
    keep: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`x @ W^T + inner @ lora_b^T` with `inner = a @ lora_a^T` (a: `dropped`, LoRA dropout's copy of x, where
    given, else x itself), for 2-D x [tokens x in] and lora_a already scaled; returns the sum and `inner` (which the
    backward reads). `weight` is W [out x in] or, laid out as `layout` says, `[W | lora_b]` or `[W ; lora_a]`
    (the caller's copies of the same values; their gradients come through lora_a and lora_b). `keep` changes
    nothing here: in a compiled, checkpointed layer it has the backward keep both outputs instead of running the
    operator again (adapters/kept_outputs.py)."""
    inner = torch.mm(x if dropped is None else dropped, lora_a.t())
    kind = _layout_of(x, weight, lora_b)
    if kind == "input":
        return torch.mm(torch.cat([x, inner], dim=1), weight.t()), inner
    dense = weight[: lora_b.shape[0]] if kind == "gradient" else weight
    return torch.mm(x, dense.t()).addmm_(inner, lora_b.t()), inner


@lora_linear.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    dropped: torch.Tensor | None,
    keep: bool = False,
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
    ctx.save_for_backward(*inputs[:5], output[1])  # not `keep`


def _backward(ctx: Any, grad: torch.Tensor, grad_inner: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """inner is lora_linear's by-product for its own backward: nothing downstream reads it, so no gradient
    arrives for it (grad_inner)."""
    x, weight, lora_a, lora_b, dropped, inner = ctx.saved_tensors
    grad_x, grad_a, grad_b, grad_dropped = lora_linear_backward(grad, x, weight, lora_a, lora_b, dropped, inner)
    return grad_x, None, grad_a, grad_b, None if dropped is None else grad_dropped, None


lora_linear.register_autograd(_backward, setup_context=_setup)


def use_lora_addmm(model: Any) -> int:
    """Switch every LoRA linear layer of `model` to the addmm forward and mark the projections of one input
    (`SIBLINGS`); returns how many were switched. The layers change class rather than module, all of one base
    class to one class, so compiled layers still share graphs."""
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
    for module in model.modules():
        for names in SIBLINGS:
            members: tuple[Any, ...] = tuple(getattr(module, name, None) for name in names)
            if all(getattr(member, "_siblings", None) == () for member in members):  # switched, not yet grouped
                for member in members:
                    member._siblings, member._pending = members, None  # a tuple: not registered as submodules
    return switched


SIBLINGS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"),)
"""Projections that read one input, by attribute name under one module: run as one `lora_linear`, the weights
stacked and the LoRA B matrices block-diagonal (one matmul for all, one rank-side product, one for x's gradient).
The first called computes all and hands the others theirs, checked to be of the same input. Not gate and up: their
gradients, written side by side into one [tokens x 2 intermediate] buffer by the compiled GELU backward, cost that
kernel 2.5x its time (11.5 of a 284 ms step, 2B shape on an H200, run 83)."""


def _dense_base(base: Any, dtype: torch.dtype) -> bool:
    """Whether `lora_linear` runs this base layer: a plain linear layer or an NF4 one computing in `dtype`, no
    bias."""
    if getattr(base, "bias", None) is not None:
        return False
    if type(base) is torch.nn.Linear:
        return True
    quant_state = getattr(base.weight, "quant_state", None)
    return type(base).__name__ == "Linear4bit" and quant_state is not None and base.compute_dtype in (None, dtype)


def _weight(bases: list[Any], dtype: torch.dtype, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """The base layers' weights stacked as one dense matrix in `dtype` and laid out for `lora_linear` with the
    (stacked) LoRA matrices (`laid_out`). NF4 weights on a GPU are dequantized straight into it
    (harness/kernels/nf4.py)."""
    if type(bases[0]) is torch.nn.Linear:
        return laid_out(_stacked([base.weight.to(dtype) for base in bases]), lora_a, lora_b)
    from harness.kernels import nf4

    right, below = margins(lora_a, lora_b)
    packed, states = [base.weight.data for base in bases], [base.weight.quant_state for base in bases]
    widened = nf4.dequantize(packed, states, dtype, right, below)
    if widened is not None:
        return widened
    from bitsandbytes.functional import dequantize_4bit

    weights = [dequantize_4bit(weight, state).to(dtype) for weight, state in zip(packed, states, strict=True)]
    return laid_out(_stacked(weights), lora_a, lora_b)


def _stacked(tensors: list[torch.Tensor], diagonal: bool = False) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    return torch.block_diag(*tensors) if diagonal else torch.cat(tensors)


def margins(lora_a: torch.Tensor, lora_b: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What `layout` puts beside W (lora_b, as more columns) or under it (lora_a, as more rows), detached."""
    kind = layout(lora_b.shape[0], lora_a.shape[1], lora_a.shape[0])
    return (lora_b.detach() if kind == "input" else None), (lora_a.detach() if kind == "gradient" else None)


def laid_out(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """W [out x in] as `lora_linear` takes it: `[W | lora_b]`, `[W ; lora_a]` or W alone, as `layout` says (the
    LoRA matrices' values copied in)."""
    right, below = margins(lora_a, lora_b)
    if right is not None:
        return torch.cat([weight, right], dim=1)
    return weight if below is None else torch.cat([weight, below])


def _fused(members: tuple[Any, ...], x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor] | None:
    """The outputs of `members` (LoRA layers reading x) by one `lora_linear`; None where one of them cannot run
    as the operator (its peft forward does), or where siblings would each drop out their own copy of x."""
    operands = []
    for member in members:
        active = [n for n in member.active_adapters if n in member.lora_A]
        if len(active) != 1 or not _dense_base(member.base_layer, dtype):
            return None
        (name,) = active
        lora_a = (member.lora_A[name].weight * member.scaling[name]).to(dtype)
        operands.append((member.base_layer, lora_a, member.lora_B[name].weight.to(dtype), member.lora_dropout[name]))
    dropout = operands[0][3]
    dropping = [d.training and getattr(d, "p", 0) > 0 for *_, d in operands]
    if len(members) > 1 and (any(dropping) or len({type(base) for base, *_ in operands}) > 1):
        return None
    flat_x = x.reshape(-1, x.shape[-1]).to(dtype)
    dropped = dropout(flat_x) if dropping[0] else None
    lora_a, lora_b = _stacked([o[1] for o in operands]), _stacked([o[2] for o in operands], diagonal=True)
    weight = _weight([o[0] for o in operands], dtype, lora_a, lora_b)
    flat, _ = lora_linear(flat_x, weight, lora_a, lora_b, dropped, members[0]._keep)
    parts = flat.split([o[2].shape[0] for o in operands], dim=1) if len(members) > 1 else (flat,)
    return [part.view(*x.shape[:-1], part.shape[-1]) for part in parts]


@functools.cache
def _addmm_class(lora_class: Any) -> Any:
    def forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        biased = any(layer.bias is not None for layer in self.lora_B.values())
        if self.disable_adapters or self.merged or self.lora_variant or biased or "adapter_names" in kwargs or args:
            return lora_class.forward(self, x, *args, **kwargs)  # what training never does: peft's own path
        autocast = torch.is_autocast_enabled(x.device.type)  # under autocast the matmuls pick their own dtype
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        if self._pending is not None:  # a sibling's doing: (its input, this layer's output)
            handed, self._pending = self._pending, None
            if handed[0] is x:
                return handed[1]
        if not kwargs:
            members = self._siblings if self._siblings and self is self._siblings[0] else (self,)
            outputs = _fused(members, x, dtype) or (_fused((self,), x, dtype) if len(members) > 1 else None)
            if outputs is not None:
                for member, output in zip(members[1 : len(outputs)], outputs[1:], strict=True):
                    member._pending = (x, output)
                return outputs[0]
        products = []
        active = [n for n in self.active_adapters if n in self.lora_A]
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

    attributes = {"forward": forward, "_siblings": (), "_pending": None, "_keep": False}
    return type(f"Addmm{lora_class.__name__}", (lora_class,), attributes)
