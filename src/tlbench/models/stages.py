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


# What tutorials and other code call a network's first layers and its classifier (seed 000 freezes by
# `conv1` and `fc`): unknown stage names among these are answered with our name for that part.
_STEM_ALIASES = ("stem", "conv1", "conv_stem", "input", "first")
_CLASSIFIER_ALIASES = ("fc", "classifier", "head", "heads", "last_linear", "top", "linear")


def check_stage_names(requested: object, stages: Stages, input_conv: str | None) -> None:
    """strategy.train_stages given as names: each one a stage of this backbone, or one line mapping the
    names it has instead (`conv1` → the stage holding it, `fc` → `head`) and the override to use."""
    if not isinstance(requested, (tuple, list)):
        return  # a count, or "all"
    names = [name for name, _ in stages if name != HEAD]
    unknown = [name for name in requested if name not in names]
    if not unknown:
        return
    hints, mapped = [], []
    for name in unknown:
        hint, stage = _stage_hint(name, stages, input_conv)
        hints.append(hint)
        mapped += [s for s in ([stage] if isinstance(stage, str) else stage) if s not in mapped]
    known = [name for name in requested if name in names]
    suggestion = [s for s in names if s in known or s in mapped]
    use = f" Use strategy.train_stages=[{','.join(suggestion)}]." if suggestion else ""
    raise StrategyError(
        f"strategy.train_stages names {', '.join(unknown)}, which this backbone does not have: "
        f"{'; '.join(hints)}.{use} Its stages, stem to top: {', '.join(names)}, then {HEAD} (always trained)."
    )


def _stage_hint(name: str, stages: Stages, input_conv: str | None) -> tuple[str, list[str]]:
    """(what `name` is called here, the stages it maps to) for a name that is not a stage."""
    bare = name.removeprefix("net.").removeprefix("trunk.")
    owners = [
        stage
        for stage, prefixes in stages
        if any(in_prefix(f"trunk.{bare}", p) or p.startswith(f"trunk.{bare}.") for p in prefixes)
    ]
    if bare in _CLASSIFIER_ALIASES and (not owners or owners == [HEAD]):
        return f"{name} is the classifier, here `{HEAD}`, which every strategy trains (leave it out)", []
    if not owners and bare.lower() in _STEM_ALIASES:
        owners = [stages[0][0]]
    owners = [stage for stage in owners if stage != HEAD]
    if not owners:
        return f"{name} is no part of this backbone", []
    hint = f"{name} is part of stage {', '.join(owners)}"
    if input_conv is not None and any(
        in_prefix(input_conv, p) for s, ps in stages if s in owners for p in ps
    ):
        conv = input_conv.removeprefix("trunk.")
        hint += f" (the 1-channel input conv {conv} trains anyway with strategy.train_input_conv=true)"
    return hint, owners


def describe_trainable(stages: Sequence[str], extra: Sequence[str]) -> str:
    """The log's and results' words for what trains: stage names, and an adapted input conv outside them."""
    described = ", ".join(stages)
    for prefix in extra:
        described += f" + input conv {prefix.removeprefix('trunk.')} (adapted to 1 channel)"
    return described


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
            trains = describe_trainable(target, pl_module.extra_trainable)
            log.info("epoch %d: training %s (newly: %s)", epoch, trains, ", ".join(newly) or "-")
