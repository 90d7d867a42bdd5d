"""A micro-batch's forward and backward as one CUDA graph (`cuda_graph: true`).

Eagerly, a QLoRA step on a small model is bound by the host: about a thousand kernels (per LoRA linear an NF4
dequantisation, the base matmul and the LoRA products, forward and backward), each launched from Python
through peft, bitsandbytes and the compiled layers' guards, while the GPU idles between them. A CUDA graph
records those launches once and replays them with one call.

What a graph needs, and how the trainer gives it: fixed shapes (micro-batches are padded to [batch_size,
max_seq_len], one graph per distinct shape and packing), no value read back during the step (the loss takes
every position and weights the unsupervised ones out; the step's loss is read once, after the optimizer), and
the same memory every replay (inputs are copied into static tensors; gradients accumulate in place into
tensors allocated before the capture, so the optimizer must zero them, never drop them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from adapters.loss import supervised_nll
from adapters.packing import Batch

MicroStep = Callable[[Batch, int], torch.Tensor]
WARMUP_RUNS = 2  # compiles the layers and lets the allocator settle before the capture


def _forward_backward(model: Any, batch: Batch, n_supervised: int | torch.Tensor, **loss_options: Any) -> torch.Tensor:
    """Forward and backward of one device batch, the loss scaled by the step's supervised tokens; its summed NLL,
    detached."""
    nll = supervised_nll(model, batch, **loss_options)
    (nll / n_supervised).backward()
    return nll.detach()


def eager_micro_step(model: Any) -> MicroStep:
    """Forward and backward of one micro-batch (on any device); returns its summed NLL, detached, on the device."""
    return lambda batch, n_supervised: _forward_backward(model, batch.to(model.device), n_supervised)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: Batch  # static device tensors the replay reads
    n_supervised: torch.Tensor
    nll: torch.Tensor  # written by every replay


class GraphedMicroStep:
    """Forward and backward of one micro-batch, captured per (shape, packed) on first sight and replayed after."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.captured: dict[tuple[tuple[int, ...], bool], _Captured] = {}
        self.pool = torch.cuda.graph_pool_handle()  # one pool: graphs replay one at a time, outputs read at once

    def __call__(self, batch: Batch, n_supervised: int) -> torch.Tensor:
        packed = batch.packed()  # on the host batch: no GPU sync
        key = (tuple(batch.input_ids.shape), packed)
        if key not in self.captured:
            self.captured[key] = self._capture(batch, packed)
        captured = self.captured[key]
        for static, given in zip(captured.inputs.tensors(), batch.tensors(), strict=True):
            static.copy_(given.pin_memory(), non_blocking=True)
        captured.n_supervised.fill_(n_supervised)
        captured.graph.replay()
        return captured.nll.clone()

    def _capture(self, batch: Batch, packed: bool) -> _Captured:
        inputs = batch.to(self.model.device)
        n_supervised = torch.ones((), device=self.model.device)
        for parameter in self.trainable:  # accumulation targets that outlive every replay
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        saved = [p.grad.clone() for p in self.trainable]

        def forward_backward() -> torch.Tensor:
            return _forward_backward(self.model, inputs, n_supervised, packed=packed, static=True)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            nll = forward_backward()
        for parameter, grad in zip(self.trainable, saved, strict=True):  # undo the warm-up's sums
            parameter.grad.copy_(grad)
        torch.cuda.empty_cache()  # what the warm-up's stream cached, now that the graph has its own pool
        return _Captured(graph, inputs, n_supervised, nll)


def micro_step(model: Any, cuda_graph: bool) -> MicroStep:
    return GraphedMicroStep(model) if cuda_graph else eager_micro_step(model)
