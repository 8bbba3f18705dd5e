"""A strategy applied to a network: stage names to requires_grad and BatchNorm modes, epoch by epoch."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import lightning as L
from torch import nn

from tlbench.models.strategies import HEAD, Stages, StrategyError

log = logging.getLogger(__name__)


def in_prefix(name: str, prefix: str) -> bool:
    """`trunk.layer1.0.conv1.weight` is in `trunk.layer1`, but `trunk.layer10.x` is not."""
    return name == prefix or name.startswith(prefix + ".")


def stage_of(name: str, stages: Stages) -> str:
    for stage, prefixes in stages:
        if any(in_prefix(name, p) for p in prefixes):
            return stage
    raise StrategyError(f"parameter {name} belongs to no stage; the backbone's stage list is incomplete")


def trains_ever(name: str, stage: str, selected: Collection[str] | None) -> bool:
    """Whether a parameter may train at all: the head's do, a backbone stage's where `selected` (the
    strategy's parameter selection, selection.py) has them or there is none."""
    return selected is None or stage == HEAD or name in selected


def set_trainable(
    net: nn.Module,
    stages: Stages,
    trainable: Sequence[str],
    extra: Sequence[str] = (),
    selected: Collection[str] | None = None,
) -> None:
    """requires_grad from stage names (only `selected` parameters of backbone stages, when given), plus
    parameter prefixes in `extra` (an adapted input conv)."""
    for name, param in net.named_parameters():
        stage = stage_of(name, stages)
        in_stage = stage in trainable and trains_ever(name, stage, selected)
        param.requires_grad = in_stage or any(in_prefix(name, p) for p in extra)


def is_frozen(module: nn.Module) -> bool | None:
    """None for a module without parameters (an affine-free BatchNorm): neither frozen nor trainable."""
    params = list(module.parameters())
    return not any(p.requires_grad for p in params) if params else None


def set_batchnorm_modes(net: nn.Module, policy: str) -> None:
    """Trainable BatchNorm in train mode, frozen in eval under policy `eval` (both ways: stages unfreeze)."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = is_frozen(module)
            if frozen is not None:
                module.train(not (frozen and policy == "eval"))


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable, total)."""
    params = list(net.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def stored_per_task(net: nn.Module, bn_policy: str) -> int:
    """What a task keeps beside the shared pretrained network: the parameters it trains, and the running
    statistics of the BatchNorm layers that follow its batches while training (trainable ones, frozen ones
    under bn=train, affine-free ones always: their statistics are the task's too)."""
    trainable, _ = count_parameters(net)
    statistics = 0
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            if not (is_frozen(module) is True and bn_policy == "eval"):
                statistics += module.running_mean.numel() + module.running_var.numel()
    return trainable + statistics


class TrainableStageSchedule(L.Callback):
    """Before every epoch, and when training (re)starts, the module trains the stages its strategy names for
    that epoch: a resumed run is built with epoch 0's stages, and Lightning skips `on_train_epoch_start` for
    an epoch it resumes mid-way. Every stage's optimizer group exists from the start (a checkpoint's optimizer
    state always fits); a frozen stage has no gradient, so the optimizer skips it."""

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        # fast_dev_run is a smoke test of the code path (one batch), not a schedule: never refused.
        if not trainer.fast_dev_run:
            pl_module.strategy.check_epochs(trainer.max_epochs)

    # `current_epoch` is the epoch about to train, in a resumed run too (set before `on_train_start`).
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.follow_schedule(trainer.current_epoch, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self.follow_schedule(trainer.current_epoch, pl_module)

    @staticmethod
    def follow_schedule(epoch: int, pl_module) -> None:
        target = pl_module.trainable_stages_at(epoch)
        if target != pl_module.trainable_stages:
            newly = [s for s in target if s not in pl_module.trainable_stages]
            pl_module.set_trainable_stages(target)
            log.info("epoch %d: training %s (newly: %s)", epoch, ", ".join(target), ", ".join(newly) or "-")
