"""The training step's forward and backward as CUDA graphs (optim.cuda_graph; off by default).

At batch 64 an eager ResNet-18 step spends longer launching kernels than running them (benchmarks/RESULTS.md:
0.40 of the compute ceiling eager, 0.78 as a graph). Forward and backward are captured once per batch shape
(`torch.cuda.make_graphed_callables`) and replayed; the optimizer step and all else stay Lightning's. Eager
is the default until `make gpu-check` (docs/GPU.md) shows a replay gives eager's gradients, faster. A graph
holds for one batch shape, trainable set, train/eval state: other batches run eagerly; unfreezing `reset`s."""

from __future__ import annotations

import gc
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def resolve_cuda_graph(choice, trainer) -> bool:
    """`auto`: on for single-device CUDA in bf16 or fp32; `true` where it cannot work says why."""
    if choice is False:
        return False
    problems, device = [], trainer.strategy.root_device.type
    if device != "cuda":
        problems.append(f"it needs a CUDA device (this run trains on the {device.upper()})")
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
    """`net(x)` for training: replayed as CUDA graphs for the first batch shape, other shapes eager.

    `captures` counts the graphs made; `error` is why capturing failed (then every step runs eagerly), for
    results.json and the report."""

    def __init__(self, net: nn.Module):
        self.net, self.captures = net, 0
        self.key: tuple | None = None
        self.graphed: nn.Module | None = None
        self.error: str | None = None

    def reset(self) -> None:
        """Drop the graphs and free their memory now: make_graphed_callables leaves the graphed module in a
        reference cycle (its forward closes over it), which only the garbage collector breaks."""
        self.key, self.graphed = None, None
        gc.collect()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.stride())
        if self.error is not None or (self.key is not None and key != self.key):
            return self.net(x)
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        # Graphs support autocast only without its weight-cast cache.
        with torch.autocast(
            "cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False
        ):
            if self.graphed is None:
                self.capture(x, key)
                if self.graphed is None:
                    return self.net(x)
            return self.graphed(x)

    def capture(self, x: torch.Tensor, key: tuple) -> None:
        # Capture's warm-up passes move BatchNorm's statistics: restore them in place (the graph's buffers).
        buffers = [(b, b.clone()) for b in self.net.buffers()]
        try:
            self.graphed = torch.cuda.make_graphed_callables(
                _Forward(self.net), (x.detach().clone(),), allow_unused_input=True
            )
            self.key = key
            self.captures += 1
        except (RuntimeError, AssertionError) as error:  # a model that cannot be captured trains eagerly
            self.error = f"{type(error).__name__}: {error}".splitlines()[0]
            self.graphed = None
            log.warning("optim.cuda_graph: capture failed (%s); training with eager steps", self.error)
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
