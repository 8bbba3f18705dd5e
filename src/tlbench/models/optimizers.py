"""optim.*: one optimizer group per stage at the strategy's rates, and a learning-rate schedule per step."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import nn

from tlbench.models.stages import in_prefix, stage_of, trains_ever
from tlbench.models.strategies import Stages, StrategyError


def parameter_groups(
    net: nn.Module,
    stages: Stages,
    rates: dict[str, float],
    weight_decay: float,
    include: Sequence[str],
    extra: Sequence[str] = (),
    selected: Collection[str] | None = None,
) -> list[dict]:
    """One optimizer group per (stage, decays?) in `include`, of the parameters that may ever train there
    (`selected`: the strategy's parameter selection). 1-D tensors (norm weights, biases) get no weight
    decay: shrinking a scale or shift towards 0 is not regularisation."""
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in net.named_parameters():
        stage = stage_of(name, stages)
        extra_param = any(in_prefix(name, p) for p in extra)
        if not extra_param and (stage not in include or not trains_ever(name, stage, selected)):
            continue
        decays = param.ndim > 1
        group = {
            "lr": rates[stage],
            "weight_decay": weight_decay if decays else 0.0,
            "stage": stage,
            "params": [],
        }
        groups.setdefault((stage, decays), group)["params"].append(param)
    return list(groups.values())


def build_optimizer(groups: list[dict], optim: Mapping, fused: bool = False) -> torch.optim.Optimizer:
    """`fused`: one kernel updates every parameter (CUDA), instead of a launch per tensor."""
    if optim["name"] == "adamw":
        return torch.optim.AdamW(groups, fused=fused or None)
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, momentum=optim["momentum"], nesterov=optim["momentum"] > 0)
    raise StrategyError(f"unknown optim.name {optim['name']!r}; choose one of: adamw, sgd")


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: Mapping, total_steps: int, steps_per_epoch: int
) -> dict | None:
    """optim.scheduler, stepped every batch so warm-up works with a handful of epochs."""
    name = optim["scheduler"]
    if name in (None, "none"):
        return None
    warmup = int(round(optim["warmup_epochs"] * steps_per_epoch))
    if name == "cosine":

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    elif name == "step":

        def factor(step: int) -> float:
            return optim["gamma"] ** (step // max(1, optim["step_epochs"] * steps_per_epoch))

    else:
        raise StrategyError(f"unknown optim.scheduler {name!r}; choose one of: cosine, step, none")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": scheduler, "interval": "step"}
