"""Narrowing projections that keep their outputs for the backward (`keep_projection_outputs` in the training
config; compiled, checkpointed layers with `lora_addmm`).

Checkpointed, a compiled layer's backward runs the layer's forward again, every matmul included: the norm after
Gemma's MLP reads the down projection's output, so that matmul runs again too, the most costly of the layer's
for the size of what it returns (the 2B shape's: 0.5 ms of an H200 for [tokens x hidden]). Here the chosen
layers' `lora_linear` calls carry `keep`, a pass over each joint graph marks them MUST_SAVE before the
partitioner splits it, and the backward reads their two outputs (the sum and the rank-r product) instead.
Imported only where used: inductor's pass machinery takes a second to import.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch.utils.checkpoint import CheckpointPolicy

from adapters.lora_addmm import layout
from harness.kernels.headloss import output_head


def mark(model: Any, layers: int) -> int:
    """Mark the narrowing projections (`layout` "gradient": Gemma's MLP down projection; the attention output
    projection where heads x head size exceed the hidden size) of the last `layers` decoder layers to keep their
    outputs for the backward (`lora_linear`'s `keep`); returns how many were marked. Compiled and checkpointed,
    such a layer's backward otherwise runs the matmul again, since the norm after it needs its output: of all a
    layer's matmuls the one whose output is smallest for its cost (the 2B shape's down projection: 0.5 ms for
    [tokens x hidden]). Layers that keep compile as graphs of their own."""
    decoder, _, _ = output_head(model)
    chosen = list(decoder.get_submodule("layers").children())[::-1][:layers]
    marked = 0
    module: Any
    for module in (member for layer in chosen for member in layer.modules()):
        if getattr(module, "_siblings", None) == () and module.active_adapters[0] in module.lora_A:
            rank = module.lora_A[module.active_adapters[0]].out_features
            if layout(module.out_features, module.in_features, rank) == "gradient":
                module._keep, marked = True, marked + 1
    return marked


class MarkKept(CustomGraphPass):
    """Inductor's pass over a compiled layer's joint graph before the partitioner splits it into forward and
    backward: `lora_linear` calls made with `keep` are marked MUST_SAVE, so that the backward reads their outputs
    rather than running them again. The partitioner honours the mark only above a memory budget of 0 (at 0 it
    keeps the graph's inputs alone): `KEEP_BUDGET`."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in graph.nodes:
            if node.target is torch.ops.adapters.lora_linear.default and _keeps(node):
                node.meta["recompute"] = CheckpointPolicy.MUST_SAVE

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))


KEEP_BUDGET = 1e-6
"""The activation memory budget that has the partitioner keep what MarkKept marks and recompute the rest, as
at 0: a share of the [saved - inputs] span so small that no other tensor fits in it."""


def _keeps(node: torch.fx.Node) -> bool:
    return bool(node.kwargs.get("keep", node.args[5] if len(node.args) > 5 else False))
