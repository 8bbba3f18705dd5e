"""Every config key, once: its type, its allowed values or range, and the one-line message when it is wrong.
One frozen dataclass per group, all in `RunConfig`; `parse` reads each field's type and `rule(...)`, refuses
a wrong key in one line and returns the typed config, which the modules below the entry point trust.

Why not Hydra's structured configs alone: OmegaConf's type errors are multi-line and it knows no ranges or
choices (`data.val_fraction=1.5` passes); pydantic or hydra-zen would add a dependency. Defaults live only
in conf/*.yaml: these dataclasses have none, and a key the YAML does not set is refused as missing."""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("imagefolder", "cifar10", "fashion_mnist")
PIPELINES = ("auto", "streaming", "memory")
AUGMENTS = ("crop_flip", "trivialaugment", "randaugment")
BALANCE = ("none", "loss", "sampler")  # data.balance: how a training split of unequal classes is shown
BAD_IMAGE_POLICIES = ("skip", "error")
IN_CHANS_MODES = ("sum", "mean", "repeat")
STRATEGIES = ("freeze", "bitfit", "norm", "lora", "surgical", "partial", "gradual", "lpft", "full", "l2sp")
LORA_TARGETS = ("conv", "linear")  # strategy.lora_targets: the layer types LoRA adapts (models/peft_lora.py)
BN_POLICIES = ("eval", "train")
AUTO_OR_BOOL = ("auto", True, False)  # strategy.cache_features, optim.cuda_graph
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
LOGGERS = ("tensorboard", "csv", "none")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
# Lightning's precision values (lightning.fabric.plugins.precision), and `auto` (trainer.resolve_precision).
PRECISIONS = (
    "auto", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "64", "32", "16", "bf16",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip
# What the module logs per validation epoch (module.py); a monitor outside this list is never logged.
VAL_METRICS = ("loss", "acc", "f1_macro", "ece", "top5", "auroc", "sensitivity", "specificity")
TWO_CLASS_METRICS = ("auroc", "sensitivity", "specificity")


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key and what to do."""


@dataclass(frozen=True)
class Rule:
    """Beyond a field's type: ge/le/gt/lt bounds, what `null` means, or a `check` with its `expect`."""

    choices: tuple = ()
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    le: float | None = None
    null: str | None = None
    check: Callable[[Any], bool] | None = None
    expect: str | None = None
    hint: str | None = None
    example: str | None = None


def rule(**kwargs: Any) -> Any:
    return field(metadata={"rule": Rule(**kwargs)})


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_crop_scale(value: Any) -> bool:
    pair = value if isinstance(value, tuple) else ()
    return len(pair) == 2 and all(map(is_number, pair)) and 0 < pair[0] <= pair[1] <= 1


def is_train_stages(value: Any) -> bool:
    """A count, `all`, or stage names; whether the names exist is checked against the built backbone."""
    names = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return isinstance(value, str) or names or (is_whole(value) and value >= 0)


def is_lora_targets(value: Any) -> bool:
    names = value if isinstance(value, tuple) else (value,)
    return len(names) > 0 and all(name in LORA_TARGETS for name in names)


# Lightning's limit_*_batches: null (all), a number of batches, or a fraction of them.
BATCH_LIMIT = dict(
    check=lambda v: (is_whole(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0),
    null="all", expect="a count (e.g. 10) or a fraction (e.g. 0.25)",
)  # fmt: skip


@dataclass(frozen=True)
class DataConfig:
    source: str = rule(choices=SOURCES)
    root: str | None
    in_chans: int = rule(choices=(1, 3), hint="1 (grayscale) or 3 (RGB)")
    per_class: int | None = rule(ge=1, null="all")
    val_per_class: int | str | None = rule(
        check=lambda v: v == "auto" or (is_whole(v) and v >= 1), null="all",
        expect="auto (scaled to data.per_class) or a whole number ≥ 1", example="100",
    )  # fmt: skip
    test_per_class: int | None = rule(ge=1, null="all", example="100")
    val_fraction: float = rule(gt=0.0, lt=1.0)
    test_fraction: float | None = rule(gt=0.0, lt=1.0, null="test on val")
    folds: int | None = rule(ge=2, null="no cross-validation")
    fold: int = rule(ge=0)
    image_size: int | None = rule(ge=8, null="the backbone's")
    batch_size: int = rule(ge=1)
    eval_batch_size: int | None = rule(ge=1, null="2 × batch_size")
    num_workers: int | None = rule(ge=0, null="one per core")
    train_crop_scale: tuple[float, float] = rule(
        check=is_crop_scale,
        expect="[low, high] with 0 < low ≤ high ≤ 1 (the share of the image a crop keeps)",
        example="[0.08,1.0]",
    )
    hflip: bool
    augment: str = rule(choices=AUGMENTS)
    on_bad_image: str = rule(choices=BAD_IMAGE_POLICIES)
    download: bool
    pipeline: str = rule(choices=PIPELINES)
    memory_max_gb: float = rule(gt=0.0)
    cache_dir: str | None
    positive_class: int = rule(ge=0)
    balance: str = rule(choices=BALANCE)
    threshold: str | float = rule(
        check=lambda v: v == "youden" or (is_number(v) and 0.0 <= v <= 1.0),
        expect="youden or a probability between 0 and 1",
    )


@dataclass(frozen=True)
class BackboneConfig:
    name: str
    weights: str | None
    checkpoint: str | None
    in_chans_mode: str = rule(choices=IN_CHANS_MODES)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = rule(choices=STRATEGIES)
    train_stages: int | str | tuple[str, ...] | None = rule(
        check=is_train_stages, expect="a number of stages ≥ 0, all, or a list of stage names"
    )
    bn: str = rule(choices=BN_POLICIES)
    head_lr: float = rule(gt=0.0)
    backbone_lr: float = rule(gt=0.0)
    lr_scale: float = rule(gt=0.0)  # × head_lr and backbone_lr (sweep=fair tunes it)
    layer_decay: float | None = rule(gt=0.0, le=1.0, null="off")
    unfreeze_every: int | None = rule(ge=1, null="not gradual")
    lp_epochs: int | None = rule(ge=0, null="not lpft")
    lora_rank: int | None = rule(ge=1, null="not lora")
    lora_alpha: float | None = rule(gt=0.0, null="not lora")
    lora_dropout: float | None = rule(ge=0.0, lt=1.0, null="not lora")
    lora_targets: str | tuple[str, ...] | None = rule(
        check=is_lora_targets, null="not lora", expect=f"layer types from: {', '.join(LORA_TARGETS)}",
        example="[conv,linear]",
    )  # fmt: skip
    l2sp_alpha: float | None = rule(ge=0.0, null="not l2sp")
    l2sp_beta: float | None = rule(ge=0.0, null="not l2sp")
    train_input_conv: bool
    cache_features: str | bool = rule(choices=AUTO_OR_BOOL)


@dataclass(frozen=True)
class OptimConfig:
    name: str = rule(choices=OPTIMIZERS)
    weight_decay: float = rule(ge=0.0)
    momentum: float = rule(ge=0.0, lt=1.0)
    scheduler: str | None = rule(choices=SCHEDULERS, null="none")
    warmup_epochs: float = rule(ge=0.0)
    step_epochs: int = rule(ge=1)
    gamma: float = rule(gt=0.0, le=1.0)
    label_smoothing: float = rule(ge=0.0, lt=1.0)
    cuda_graph: str | bool = rule(choices=AUTO_OR_BOOL)
    mixup: float = rule(ge=0.0, expect="a number ≥ 0 (0 = off)")
    cutmix: float = rule(ge=0.0, expect="a number ≥ 0 (0 = off)")
    ema: float | None = rule(gt=0.0, lt=1.0, null="off", expect="a decay between 0 and 1")


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = rule(ge=1)
    # A length in optimizer steps instead (run/budget.py): max_epochs is then computed per run.
    budget_steps: int | None = rule(ge=1, null="off: train trainer.max_epochs")
    budget_min_epochs: int = rule(ge=1)
    accelerator: str = rule(choices=ACCELERATORS)
    devices: int | str | tuple[int, ...] = rule(
        check=lambda v: v == "auto" or isinstance(v, tuple) or (is_whole(v) and v >= 1),
        expect="auto, a count ≥ 1 or a list of ids",
    )
    strategy: str
    # A YAML `precision: 32` is the number 32: Lightning takes both.
    precision: str | int = rule(choices=(*PRECISIONS, 64, 32, 16), hint=", ".join(PRECISIONS))
    log_every_n_steps: int = rule(ge=1)
    gradient_clip_val: float | None = rule(gt=0.0, null="off")
    deterministic: bool | str = rule(choices=(True, False, "warn"))
    enable_progress_bar: bool
    fast_dev_run: bool | int = rule(
        check=lambda v: isinstance(v, bool) or (is_whole(v) and v >= 1), expect="true, false or a count ≥ 1"
    )
    limit_train_batches: int | float | None = rule(**BATCH_LIMIT)
    limit_val_batches: int | float | None = rule(**BATCH_LIMIT)
    limit_test_batches: int | float | None = rule(**BATCH_LIMIT)
    num_sanity_val_steps: int = rule(ge=-1)
    monitor: str = rule(choices=tuple(f"val/{metric}" for metric in VAL_METRICS))
    early_stopping_patience: int | None = rule(ge=1, null="off")


@dataclass(frozen=True)
class LoggerConfig:
    name: str = rule(choices=LOGGERS)


@dataclass(frozen=True)
class TuneConfig:
    lr_find: bool
    min_lr: float = rule(gt=0.0)
    max_lr: float = rule(gt=0.0)
    num_training: int = rule(ge=20)


@dataclass(frozen=True)
class RunConfig:
    seed: int = rule(ge=0)
    force: bool
    tune: TuneConfig
    data: DataConfig
    backbone: BackboneConfig
    strategy: StrategyConfig
    optim: OptimConfig
    trainer: TrainerConfig
    logger: LoggerConfig


def parse(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """`values` (plain or OmegaConf) as the typed `cls`, or ConfigError for the first key that is wrong."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    group, unknown = prefix.rstrip(".") or "the config", sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; valid keys of {group}: {', '.join(fields)}")
    typed = {}
    for name, spec in fields.items():
        key = prefix + name
        if name not in values:
            raise ConfigError(f"{key} is not set; add it to the config group's YAML file (conf/)")
        if dataclasses.is_dataclass(hints[name]):
            typed[name] = parse(hints[name], values[name], key + ".")
        else:  # a field without rule(): its type says it all
            typed[name] = parse_value(
                key, plain(values[name]), hints[name], spec.metadata.get("rule", Rule())
            )
    return cls(**typed)


def plain(value: Any) -> Any:
    """Lists → tuples, so a typed config holds no mutable value."""
    return tuple(plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def parse_value(key: str, value: Any, hint: Any, spec: Rule) -> Any:
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in kinds:
        return None
    if spec.choices:
        # `value in choices` alone would let True pass for 1 (and 1.0 for 1): compare types too.
        if not any(value == c and type(value) is type(c) for c in spec.choices):
            valid = spec.hint or ", ".join(str(c).lower() for c in spec.choices)
            raise ConfigError(f"{key}={value!r} is not a valid choice; choose one of: {valid}")
        return value
    kind = next(k for k in kinds if k is not type(None))
    kind_check = {bool: lambda v: isinstance(v, bool), int: is_whole, float: is_number}.get(kind)
    fits = (spec.check or kind_check or (lambda v: isinstance(v, kind)))(value)
    bounds = [(spec.ge, "≥", operator.ge), (spec.gt, ">", operator.gt), (spec.lt, "<", operator.lt),
              (spec.le, "≤", operator.le)]  # fmt: skip
    if fits and spec.check is None:
        fits = all(bound is None or holds(value, bound) for bound, _, holds in bounds)
    if fits:
        return float(value) if kind is float else value
    raise ConfigError(describe(key, value, kind, spec, bounds))


def describe(key: str, value: Any, kind: type, spec: Rule, bounds: list) -> str:
    """The one line for a refused value: the key, what it must be, the value as written, and an example."""
    shown = list(value) if isinstance(value, tuple) else value
    if kind is bool and spec.expect is None:
        return f"{key} must be true or false, got {shown!r}"
    ranges = " and ".join(f"{sign} {bound}" for bound, sign, _ in bounds if bound is not None)
    noun = {int: "a whole number", float: "a number"}.get(kind, "text")
    expect = spec.expect or " ".join(filter(None, (noun, ranges)))
    nullable = f"null ({spec.null}) or " if spec.null else ""
    example = spec.example or (str(spec.ge if spec.ge is not None else 1) if kind is int else None)
    return f"{key} must be {nullable}{expect}, got {shown!r}" + (f": e.g. {key}={example}" if example else "")
