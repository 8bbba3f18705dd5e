"""Config values checked before anything runs (or is removed): one line naming the key and the fix.

Hydra and OmegaConf accept any value a YAML scalar can hold, so `trainer.max_epochs=ten` or
`data.positive_class=5` would otherwise surface as a traceback deep inside torch or Lightning, after data
loading, or — worse — after `force=true` has already cleared the run folder. Every key of conf/ that takes
a number or a name is checked here; the valid names come from the modules that use them (one source of
truth), and the checks are cheap: no image is read and no network is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from tlbench.data.datamodule import BALANCE
from tlbench.data.pipelines import PIPELINES
from tlbench.data.sources import SOURCES, DataError, check_folds
from tlbench.models.backbones import IN_CHANS_MODES, get_preset
from tlbench.models.module import check_threshold_rule
from tlbench.models.recipes import check_recipes
from tlbench.models.steps import CUDA_GRAPH_CHOICES
from tlbench.models.strategies import BN_POLICIES, STRATEGIES

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
BAD_IMAGE_POLICIES = ("skip", "error")
# What the module logs per validation epoch (module.py); a monitor outside this list is never logged.
VAL_METRICS = ("loss", "acc", "f1_macro", "ece", "top5", "auroc", "sensitivity", "specificity")
TWO_CLASS_METRICS = ("auroc", "sensitivity", "specificity")
MIN_IMAGE_SIZE = 8
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
# Lightning's precision values (lightning.fabric.plugins.precision), and `auto` (trainer.resolve_precision).
PRECISIONS = (
    "auto", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "64", "32", "16", "bf16",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key and what to do."""


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that cannot run. Cheap: no data, no model is touched."""
    check_int("seed", cfg.seed, minimum=0)
    check_bool("force", cfg.get("force", False))
    check_data(cfg.data)
    check_backbone(cfg.backbone, cfg.data.in_chans)
    check_strategy(cfg.strategy)
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    check_name("logger.name", cfg.logger.name, logger_names())
    check_recipes(cfg)  # augmentation policy, mixup/cutmix, EMA, early stopping


def check_against_data(cfg: DictConfig, num_classes: int) -> None:
    """The values that depend on how many classes the data has: checked as soon as the classes are known,
    before a network is built."""
    positive = cfg.data.positive_class
    if not 0 <= positive < num_classes:
        raise ConfigError(
            f"data.positive_class={positive} is out of range: the data has {num_classes} classes; "
            f"use 0..{num_classes - 1}"
        )
    metric = str(cfg.trainer.monitor).removeprefix("val/")
    if metric in TWO_CLASS_METRICS and num_classes != 2:
        raise ConfigError(
            f"trainer.monitor={cfg.trainer.monitor} is logged for two classes only, the data has "
            f"{num_classes}; use trainer.monitor=val/acc"
        )
    if metric == "top5" and num_classes < 10:
        raise ConfigError(
            f"trainer.monitor=val/top5 is logged from 10 classes on, the data has {num_classes}; "
            "use trainer.monitor=val/acc"
        )


# ------------------------------------------------------------------------------------------------ groups
def check_data(data: DictConfig) -> None:
    check_name("data.source", data.source, SOURCES)
    if data.source == "imagefolder":
        if not data.root:
            raise ConfigError("data=imagefolder needs data.root=<folder of class folders (or train/ val/)>")
        root = Path(str(data.root)).expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"data.root={data.root} does not exist (or is not a folder); point it at your images"
            )
    check_name("data.in_chans", data.in_chans, (1, 3), hint="1 (grayscale) or 3 (RGB)")
    for key in ("per_class", "val_per_class"):
        check_int(f"data.{key}", data[key], minimum=1, optional=True)
    check_int("data.folds", data.folds, minimum=2, optional=True)
    check_int("data.fold", data.fold, minimum=0)
    try:
        check_folds(data.folds, data.fold)
    except DataError as error:
        raise ConfigError(str(error)) from None
    check_number("data.val_fraction", data.val_fraction, above=0.0, below=1.0)
    check_int("data.image_size", data.image_size, minimum=MIN_IMAGE_SIZE, optional=True)
    check_int("data.batch_size", data.batch_size, minimum=1)
    check_int("data.eval_batch_size", data.eval_batch_size, minimum=1, optional=True)
    check_int("data.num_workers", data.num_workers, minimum=0, optional=True)
    check_crop_scale("data.train_crop_scale", data.train_crop_scale)
    check_bool("data.hflip", data.hflip)
    check_bool("data.download", data.download)
    check_name("data.on_bad_image", data.on_bad_image, BAD_IMAGE_POLICIES)
    check_name("data.pipeline", data.pipeline, PIPELINES)
    check_number("data.memory_max_gb", data.memory_max_gb, above=0.0)
    check_int("data.positive_class", data.positive_class, minimum=0)
    check_name("data.balance", data.get("balance", "sampler"), BALANCE)
    try:
        check_threshold_rule(data.get("threshold", "youden"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_number("data.test_fraction", data.get("test_fraction"), above=0.0, below=1.0, optional=True)


def check_backbone(backbone: DictConfig, in_chans: int) -> None:
    check_name("backbone.in_chans_mode", backbone.get("in_chans_mode", "sum"), IN_CHANS_MODES)
    checkpoint = backbone.get("checkpoint")
    if checkpoint is not None:
        path = Path(str(checkpoint)).expanduser()
        if path.is_dir():
            raise ConfigError(f"backbone.checkpoint={checkpoint} is a folder; give the weights file in it")
        if not path.is_file():
            raise ConfigError(f"backbone.checkpoint={checkpoint}: no such file; check the path")
    try:  # the name and weights tag, from metadata only (no download, no model)
        get_preset(str(backbone.name), backbone.weights, in_chans)
    except ValueError as error:
        raise ConfigError(
            f"backbone.name={backbone.name} / backbone.weights={backbone.weights}: {error}"
        ) from None


def check_strategy(strategy: DictConfig) -> None:
    check_name("strategy.name", strategy.name, STRATEGIES)
    check_name("strategy.bn", strategy.bn, BN_POLICIES)
    check_number("strategy.head_lr", strategy.head_lr, above=0.0)
    check_number("strategy.backbone_lr", strategy.backbone_lr, above=0.0)
    check_number("strategy.layer_decay", strategy.layer_decay, above=0.0, at_most=1.0, optional=True)
    check_int(
        "strategy.unfreeze_every", strategy.unfreeze_every, minimum=1, optional=strategy.name != "gradual"
    )
    check_int("strategy.lp_epochs", strategy.get("lp_epochs"), minimum=0, optional=strategy.name != "lpft")
    check_train_stages(strategy.train_stages)
    check_bool("strategy.train_input_conv", strategy.train_input_conv)
    check_name(
        "strategy.cache_features", strategy.cache_features, ("auto", True, False), hint="auto, true or false"
    )


def check_optim(optim: DictConfig) -> None:
    check_name("optim.name", optim.name, OPTIMIZERS)
    check_name("optim.scheduler", "none" if optim.scheduler is None else optim.scheduler, SCHEDULERS)
    check_number("optim.weight_decay", optim.weight_decay, minimum=0.0)
    check_number("optim.momentum", optim.momentum, minimum=0.0, below=1.0)
    check_number("optim.warmup_epochs", optim.warmup_epochs, minimum=0.0)
    check_int("optim.step_epochs", optim.step_epochs, minimum=1)
    check_number("optim.gamma", optim.gamma, above=0.0, at_most=1.0)
    check_number("optim.label_smoothing", optim.label_smoothing, minimum=0.0, below=1.0)
    check_name("optim.cuda_graph", optim.cuda_graph, CUDA_GRAPH_CHOICES, hint="auto, true or false")


def check_trainer(trainer: DictConfig) -> None:
    check_int("trainer.max_epochs", trainer.max_epochs, minimum=1)
    check_name("trainer.accelerator", trainer.accelerator, ACCELERATORS)
    devices = trainer.devices
    if not (devices == "auto" or isinstance(devices, (ListConfig, list))):
        check_int("trainer.devices", devices, minimum=1)
    check_name("trainer.precision", str(trainer.precision), PRECISIONS)  # 32 and "32" alike
    check_int("trainer.log_every_n_steps", trainer.log_every_n_steps, minimum=1)
    check_number("trainer.gradient_clip_val", trainer.gradient_clip_val, above=0.0, optional=True)
    check_bool("trainer.deterministic", trainer.deterministic, also=("warn",))
    check_bool("trainer.enable_progress_bar", trainer.enable_progress_bar)
    if not isinstance(trainer.fast_dev_run, bool):
        check_int("trainer.fast_dev_run", trainer.fast_dev_run, minimum=1)
    for split in ("train", "val", "test"):
        check_batch_limit(f"trainer.limit_{split}_batches", trainer[f"limit_{split}_batches"])
    check_int("trainer.num_sanity_val_steps", trainer.num_sanity_val_steps, minimum=-1)
    monitor = str(trainer.monitor)
    if not monitor.startswith("val/") or monitor.removeprefix("val/") not in VAL_METRICS:
        choices = ", ".join(f"val/{m}" for m in VAL_METRICS)
        raise ConfigError(f"trainer.monitor={monitor!r} is not a validation metric; choose one of: {choices}")


# ------------------------------------------------------------------------------------------------- kinds
def check_int(key: str, value: Any, minimum: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        example = "null" if optional else str(max(minimum or 0, 1))
        raise ConfigError(f"{key} must be a whole number, got {value!r}: e.g. {key}={example}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be ≥ {minimum}, got {value}: e.g. {key}={minimum}")


def check_number(
    key: str,
    value: Any,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    optional: bool = False,
) -> None:
    """A real number in a range: `minimum`/`at_most` are inclusive bounds, `above`/`below` exclusive."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}: e.g. {key}=0.001")
    bounds = [
        (minimum, lambda v, b: v >= b, "≥"),
        (above, lambda v, b: v > b, ">"),
        (below, lambda v, b: v < b, "<"),
        (at_most, lambda v, b: v <= b, "≤"),
    ]
    wanted = " and ".join(f"{sign} {bound}" for bound, _, sign in bounds if bound is not None)
    for bound, holds, _ in bounds:
        if bound is not None and not holds(value, bound):
            raise ConfigError(f"{key} must be {wanted}, got {value}")


def check_bool(key: str, value: Any, also: Sequence[Any] = ()) -> None:
    if not isinstance(value, bool) and value not in also:
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def check_name(key: str, value: Any, choices: Sequence[Any], hint: str | None = None) -> None:
    # `value in choices` alone would let True pass for 1 (and 1.0 for 1): compare types too.
    if not any(value == choice and type(value) is type(choice) for choice in choices):
        valid = hint or ", ".join(str(c) for c in choices)
        raise ConfigError(f"{key}={value!r} is not a valid choice; choose one of: {valid}")


def check_crop_scale(key: str, value: Any) -> None:
    pair = list(value) if isinstance(value, (ListConfig, list, tuple)) else None
    numbers = pair is not None and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    if not numbers or len(pair) != 2 or not 0.0 < pair[0] <= pair[1] <= 1.0:
        raise ConfigError(
            f"{key} must be [low, high] with 0 < low ≤ high ≤ 1 (the share of the image a crop keeps), "
            f"got {value}: e.g. {key}=[0.08,1.0]"
        )


def check_train_stages(value: Any) -> None:
    """A count, `all`, or stage names; whether the names exist is checked against the built backbone."""
    if value is None or value == "all" or isinstance(value, str):
        return
    if isinstance(value, (ListConfig, list)) and all(isinstance(v, str) for v in value):
        return
    check_int("strategy.train_stages", value, minimum=0)


def check_batch_limit(key: str, value: Any) -> None:
    """Lightning's limit_*_batches: null, a number of batches, or a fraction of them."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        return
    raise ConfigError(
        f"{key} must be null, a number of batches (e.g. 10) or a fraction (e.g. 0.25), got {value!r}"
    )


def logger_names() -> tuple[str, ...]:
    from tlbench.run.trainer import LOGGERS  # imported here: train imports this module

    return LOGGERS
