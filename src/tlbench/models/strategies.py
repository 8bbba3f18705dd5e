"""Transfer strategies: which stages of a backbone train, how fast, and what frozen BatchNorm does.

Everything here speaks in the backbone's stage names (stem → … → head), so no strategy special-cases an
architecture. A strategy is four numbers and a name:

  freeze   head only                      (feature extraction)
  partial  the last K stages + head, or a named list such as [layer3, layer4]
  full     every stage
  gradual  head first, then one more stage from the top every `unfreeze_every` epochs
  lpft     head only for `lp_epochs` epochs (a linear probe), then every stage (Kumar et al., 2022)

gradual and lpft change their trainable stages with the epoch. Which stages train is a function of the
epoch alone (`trainable_stages_at`), so a run resumed at any epoch trains what the uninterrupted run trained.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import lightning as L
import torch
from torch import nn

log = logging.getLogger(__name__)

STRATEGIES = ("freeze", "partial", "full", "gradual", "lpft")
# Their trainable stages change with the epoch: every stage has its optimizer groups from the first step.
SCHEDULED = ("gradual", "lpft")
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
    if strategy in ("freeze", "lpft"):
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


def whole_number(key: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StrategyError(f"strategy.{key} must be a whole number ≥ {minimum}, got {value!r}")
    return value


def trainable_stages_at(stages: Stages, strategy: dict, epoch: int) -> list[str]:
    """The stages that train during `epoch` (0-based), head included: a function of the epoch only, so a
    resumed run recomputes exactly what the uninterrupted run had at that epoch."""
    name = strategy["name"]
    initial = initial_trainable_stages(stages, name, strategy.get("train_stages"))
    backbone = backbone_stage_names(stages)
    if name == "lpft":
        probing = epoch < whole_number("lp_epochs", strategy.get("lp_epochs"), minimum=0)
        return [HEAD] if probing else backbone + [HEAD]
    if name != "gradual":
        return initial
    frozen_from_top = [stage for stage in reversed(backbone) if stage not in initial]
    unfrozen = frozen_from_top[: epoch // whole_number("unfreeze_every", strategy.get("unfreeze_every"), 1)]
    return [stage for stage in backbone if stage in initial or stage in unfrozen] + [HEAD]


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


def is_frozen(module: nn.Module) -> bool | None:
    """None for a module without parameters (an affine-free BatchNorm): neither frozen nor trainable."""
    params = list(module.parameters())
    return not any(p.requires_grad for p in params) if params else None


def set_batchnorm_modes(net: nn.Module, policy: str) -> None:
    """Training-time BatchNorm modes: a trainable BatchNorm follows the batch (train mode), whichever
    strategy made it trainable; a frozen one keeps its running statistics (eval) under policy `eval`.

    Setting both directions matters when the trainable set changes mid-run: a stage that gradual
    unfreezing (or lpft's switch) makes trainable must leave the eval mode it had while frozen.
    """
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = is_frozen(module)
            if frozen is not None:
                module.train(not (frozen and policy == "eval"))


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


class TrainableStageSchedule(L.Callback):
    """Before every epoch trains, the module trains the stages its strategy names for that epoch
    (gradual: one more stage from the top every `unfreeze_every` epochs; lpft: all after `lp_epochs`).

    Every epoch, not only where the schedule changes, and once more when training (re)starts: a run
    resumed from a checkpoint is built with epoch 0's stages, whatever epoch it stopped in, and Lightning
    does not call `on_train_epoch_start` for an epoch it resumes in the middle of.
    The optimizer groups of every stage exist from the start with their own learning rates (so the
    scheduler shapes them like every other group, and a checkpoint's optimizer state always fits); while
    a stage is frozen its parameters have no gradient and the optimizer skips them, so unfreezing is
    exactly "adding it to the optimizer" at that epoch.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        strategy, epochs = pl_module.strategy, trainer.max_epochs
        # fast_dev_run is a smoke test of the code path (one batch), not a schedule: never refused.
        smoke = bool(trainer.fast_dev_run)
        if (
            strategy["name"] == "lpft"
            and not smoke
            and epochs is not None
            and 0 < epochs <= strategy["lp_epochs"]
        ):
            raise StrategyError(
                f"strategy.lp_epochs={strategy['lp_epochs']} leaves no epoch of fine-tuning in "
                f"trainer.max_epochs={epochs}; use strategy.lp_epochs < {epochs} (or strategy=freeze)"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.follow_schedule(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self.follow_schedule(trainer, pl_module)

    @staticmethod
    def follow_schedule(trainer: L.Trainer, pl_module) -> None:
        # The epoch about to train, as the data side counts it (samplers get the same number).
        epoch = trainer.fit_loop.epoch_progress.current.processed
        target = pl_module.trainable_stages_at(epoch)
        if target != pl_module.trainable_stages:
            newly = [s for s in target if s not in pl_module.trainable_stages]
            pl_module.set_trainable_stages(target)
            log.info("epoch %d: training %s (newly: %s)", epoch, ", ".join(target), ", ".join(newly) or "-")
