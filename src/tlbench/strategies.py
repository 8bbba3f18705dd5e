"""Transfer strategies: which stages of a backbone train, how fast, and what frozen BatchNorm does.

Everything here speaks in the backbone's stage names (stem → … → head), so no strategy special-cases an
architecture. A strategy is four numbers and a name:

  freeze   head only                      (feature extraction)
  partial  the last K stages + head, or a named list such as [layer3, layer4]
  full     every stage
  gradual  head first, then one more stage from the top every `unfreeze_every` epochs
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import lightning as L
import torch
from torch import nn

log = logging.getLogger(__name__)

STRATEGIES = ("freeze", "partial", "full", "gradual")
BN_POLICIES = ("eval", "train")
HEAD = "head"

Stages = list[tuple[str, list[str]]]


class StrategyError(ValueError):
    """A strategy setting that cannot apply to this backbone; the message lists what can."""


def in_prefix(name: str, prefix: str) -> bool:
    """`trunk.layer1.0.conv1.weight` is in `trunk.layer1`, but `trunk.layer10.x` is not."""
    return name == prefix or name.startswith(prefix + ".")


def stage_of(name: str, stages: Stages) -> str:
    for stage, prefixes in stages:
        if any(in_prefix(name, p) for p in prefixes):
            return stage
    raise StrategyError(f"parameter {name} belongs to no stage; the backbone's stage list is incomplete")


def backbone_stage_names(stages: Stages) -> list[str]:
    return [name for name, _ in stages if name != HEAD]


def initial_trainable_stages(
    stages: Stages, strategy: str, train_stages: int | str | Sequence[str] | None
) -> list[str]:
    """Names of the stages that train from the first step, head included."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    backbone = backbone_stage_names(stages)
    if strategy == "freeze":
        return [HEAD]
    if strategy == "full":
        return backbone + [HEAD]
    if train_stages is None:
        train_stages = 1 if strategy == "partial" else 0
    if isinstance(train_stages, str) and train_stages != "all":
        train_stages = [train_stages]
    if train_stages == "all":
        return backbone + [HEAD]
    if isinstance(train_stages, int):
        if not 0 <= train_stages <= len(backbone):
            raise StrategyError(
                f"strategy.train_stages={train_stages}, but this backbone has {len(backbone)} stages "
                f"({', '.join(backbone)}); use 0..{len(backbone)} or a list of names"
            )
        return backbone[len(backbone) - train_stages :] + [HEAD]
    unknown = [s for s in train_stages if s not in backbone]
    if unknown:
        raise StrategyError(
            f"strategy.train_stages names {unknown}, which this backbone does not have; "
            f"its stages, stem to top: {', '.join(backbone)}"
        )
    return [s for s in backbone if s in train_stages] + [HEAD]


def resolve_cache_features(strategy: dict) -> bool:
    """Cached features equal end-to-end training only when the whole trunk is a fixed function: `auto`
    caches exactly then (freeze with bn=eval); `true` elsewhere is refused with the reason."""
    choice = strategy.get("cache_features", "auto")
    if choice not in ("auto", True, False):
        raise StrategyError(f"strategy.cache_features must be auto, true or false, got {choice!r}")
    fixed_trunk = strategy["name"] == "freeze" and strategy["bn"] == "eval"
    if choice is True and not fixed_trunk:
        raise StrategyError(
            "strategy.cache_features=true needs strategy=freeze with strategy.bn=eval "
            f"(got strategy={strategy['name']}, bn={strategy['bn']}): features can be computed once only "
            "when no trunk weight and no BatchNorm statistic changes during training. "
            "Use strategy=freeze, or strategy.cache_features=false."
        )
    return fixed_trunk if choice == "auto" else choice


def set_trainable(
    net: nn.Module, stages: Stages, trainable: Sequence[str], extra: Sequence[str] = ()
) -> None:
    """requires_grad from stage names, plus parameter prefixes in `extra` (an adapted input conv)."""
    for name, param in net.named_parameters():
        param.requires_grad = stage_of(name, stages) in trainable or any(in_prefix(name, p) for p in extra)


def set_frozen_batchnorm_eval(net: nn.Module) -> int:
    """Frozen BatchNorm keeps its ImageNet running statistics: a frozen layer must not drift with the batch.

    Returns how many BatchNorm layers were put in eval mode.
    """
    frozen = 0
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
                frozen += 1
    return frozen


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable, total)."""
    params = list(net.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def stage_learning_rates(
    stages: Stages, head_lr: float, backbone_lr: float, layer_decay: float | None
) -> dict[str, float]:
    """Head at `head_lr`; the top backbone stage at `backbone_lr`, each stage below it × `layer_decay`."""
    backbone = backbone_stage_names(stages)
    if head_lr <= 0 or backbone_lr < 0:
        raise StrategyError(f"learning rates must be positive: head_lr={head_lr}, backbone_lr={backbone_lr}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise StrategyError(f"strategy.layer_decay must be in (0, 1] or null, got {layer_decay}")
    decay = layer_decay or 1.0
    rates = {name: backbone_lr * decay ** (len(backbone) - 1 - i) for i, name in enumerate(backbone)}
    rates[HEAD] = head_lr
    return rates


def parameter_groups(
    net: nn.Module,
    stages: Stages,
    rates: dict[str, float],
    weight_decay: float,
    include: Sequence[str],
    extra: Sequence[str] = (),
) -> list[dict]:
    """One optimizer group per (stage, decays?) for the stages in `include`.

    Norm weights and biases (1-D tensors) get no weight decay: shrinking a scale or a shift towards 0 is
    not regularisation. Each group carries its stage name so logs and callbacks can find it.
    """
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in net.named_parameters():
        stage = stage_of(name, stages)
        if stage not in include and not any(in_prefix(name, p) for p in extra):
            continue
        decays = param.ndim > 1
        group = groups.setdefault(
            (stage, decays),
            {
                "params": [],
                "lr": rates[stage],
                "weight_decay": weight_decay if decays else 0.0,
                "stage": stage,
            },
        )
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(
    groups: list[dict], name: str, momentum: float = 0.9, fused: bool = False
) -> torch.optim.Optimizer:
    """`fused`: one kernel updates every parameter (CUDA), instead of a launch per tensor."""
    if name == "adamw":
        return torch.optim.AdamW(groups, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, nesterov=momentum > 0)
    raise StrategyError(f"unknown optim.name {name!r}; choose one of: adamw, sgd")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    step_epochs: int = 7,
    gamma: float = 0.1,
) -> dict | None:
    """Lightning's scheduler dict, stepped every batch so warm-up works with a handful of epochs."""
    if name in (None, "none"):
        return None
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if name == "cosine":

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    elif name == "step":

        def factor(step: int) -> float:
            return gamma ** (step // max(1, step_epochs * steps_per_epoch))

    else:
        raise StrategyError(f"unknown optim.scheduler {name!r}; choose one of: cosine, step, none")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": scheduler, "interval": "step"}


class GradualUnfreezing(L.Callback):
    """Every `every` epochs, the next frozen stage from the top starts training.

    Its optimizer groups exist from the start with their own learning rates (so the scheduler shapes them
    like every other group); while a stage is frozen its parameters have no gradient and the optimizer
    skips them, so unfreezing is exactly "adding it to the optimizer" at that epoch.
    """

    def __init__(self, every: int):
        if every < 1:
            raise StrategyError(f"strategy.unfreeze_every must be ≥ 1 epoch, got {every}")
        self.every = every

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if epoch == 0 or epoch % self.every:
            return
        target = pl_module.trainable_stages_at(epoch)
        newly = [s for s in target if s not in pl_module.trainable_stages]
        if newly:
            pl_module.set_trainable_stages(target)
            log.info("epoch %d: unfreezing %s", epoch, ", ".join(newly))
