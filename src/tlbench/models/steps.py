"""The training step's forward and backward as CUDA graphs (optim.cuda_graph).

At batch 64 an eager step of a ResNet-18 spends longer launching kernels from Python than the GPU spends
running them (benchmarks/RESULTS.md: 0.40 of the compute ceiling eager, 0.78 replayed as a graph). Here the
network's forward and backward are captured once per batch shape with torch's maintained
`torch.cuda.make_graphed_callables` and replayed; the loss, Lightning's optimizer step (fused AdamW: a few
kernels for all parameters), checkpoints, schedulers and logging stay Lightning's automatic optimisation,
so a graphed run is every other run with faster steps.

A graph is valid for one batch shape, one set of trainable parameters and one train/eval state: the epoch's
last, smaller batch runs eagerly, and gradual unfreezing drops the graphs (`reset`) to capture anew.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
CUDA_GRAPH_CHOICES = ("auto", True, False)


def resolve_cuda_graph(choice, trainer) -> bool:
    """`auto`: on for single-device CUDA training in bf16 or fp32, where a replay beats eager launches;
    `true` where it cannot work says why."""
    if choice not in CUDA_GRAPH_CHOICES:
        raise ValueError(f"optim.cuda_graph must be auto, true or false, got {choice!r}")
    if choice is False:
        return False
    problems = []
    if trainer.strategy.root_device.type != "cuda":
        problems.append("it needs a CUDA device (this run trains on the CPU)")
    if trainer.world_size > 1:
        problems.append("it captures one process's step (set trainer.devices=1)")
    if "16-mixed" in str(trainer.precision) and "bf16" not in str(trainer.precision):
        problems.append("fp16 loss scaling steps on the host (use trainer.precision=bf16-mixed)")
    if trainer.accumulate_grad_batches != 1:
        problems.append("gradient accumulation changes the step (set trainer.accumulate_grad_batches=1)")
    if not problems:
        return True
    if choice is True:
        raise ValueError("optim.cuda_graph=true cannot apply: " + "; ".join(problems))
    return False


class _Forward(nn.Module):
    """A fresh module around the network per capture: make_graphed_callables replaces the forward of the
    module it is given, and the network itself must stay eager for validation and odd-sized batches."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GraphedForwardBackward:
    """`module(x)` for training: replayed as CUDA graphs for the first batch shape, other shapes eager."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.key: tuple | None = None
        self.graphed: nn.Module | None = None
        self.failed = False

    def reset(self) -> None:
        self.key, self.graphed = None, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.stride())
        if self.failed or (self.key is not None and key != self.key):
            return self.module(x)
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        # Graphs support autocast only without its weight-cast cache.
        with torch.autocast(
            "cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False
        ):
            if self.graphed is None:
                self.capture(x, key)
                if self.graphed is None:
                    return self.module(x)
            return self.graphed(x)

    def capture(self, x: torch.Tensor, key: tuple) -> None:
        try:
            self.graphed = torch.cuda.make_graphed_callables(
                _Forward(self.module), (x.detach().clone(),), allow_unused_input=True
            )
            self.key = key
        except (RuntimeError, AssertionError) as error:  # a model that cannot be captured trains eagerly
            log.warning("optim.cuda_graph: capture failed (%s); training with eager steps", error)
            self.failed, self.graphed = True, None
