"""Transfer strategies: which stages of a backbone train each epoch, how fast, and what frozen BatchNorm does.
One `Strategy` value (`Strategy.from_config`) in stage names (stem → … → head), from a row of `STRATEGIES`:

  freeze   a linear probe for good: the head only (feature extraction)
  bitfit   every bias of the backbone + head (Ben Zaken et al., 2022)
  norm     every normalisation layer's scale and shift + head
  lora     low-rank adapters (peft) on the backbone's conv / linear layers + head (Hu et al., 2022)
  surgical one named stage + head (Lee et al., "Surgical fine-tuning", ICLR 2023)
  partial  the last K stages + head, or a named list such as [layer3, layer4]
  gradual  head (+ train_stages) first, then one more stage from the top every `unfreeze_every` epochs
  lpft     a linear probe for `lp_epochs` epochs, then every stage (Kumar et al., 2022)
  full     every stage
  l2sp     every stage, pulled towards the pretrained weights by the L2-SP penalty (Li et al., ICML 2018)
Which stages train is a function of the epoch alone, so a resumed run trains what the uninterrupted run did;
`parameters` says which parameters of a training backbone stage train (the head always trains whole).
No other code branches on a strategy's name; no torch here: the report reads the table too."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files

import yaml

HEAD = "head"
FOREVER = math.inf  # probe_epochs of freeze

Stages = list[tuple[str, list[str]]]


class StrategyError(ValueError):
    """A strategy setting that cannot apply to this backbone; the message lists what can."""


@dataclass(frozen=True)
class Rule:
    """One strategy: its `Strategy` schedule fields from its config, the keys that must not be null (each
    with an example value for the error), and the package it imports beyond the core ones (import name, the
    pip command), which the config check asks for before anything runs."""

    schedule: Callable[[Mapping], dict]
    required_keys: Mapping[str, str] = field(default_factory=dict)
    package: tuple[str, str] | None = None


@dataclass(frozen=True)
class Lora:
    """strategy=lora: peft's LoRA on the backbone's layers of `targets` types (models/peft_lora.py)."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]  # layer types: conv, linear


@dataclass(frozen=True)
class L2SP:
    """strategy=l2sp: alpha/2 * ||w - w0||^2 over the backbone (w0: its starting weights) + beta/2 * ||w||^2
    over the head, added to the loss (models/penalties.py)."""

    alpha: float
    beta: float


def one_stage(values: Mapping) -> tuple[str]:
    """surgical's stage: one name (which names exist is checked against the built backbone)."""
    stage = values["train_stages"]
    names = [stage] if isinstance(stage, str) else stage if isinstance(stage, (list, tuple)) else []
    if len(names) != 1 or not isinstance(names[0], str) or names[0] == "all":
        raise StrategyError(
            f"strategy=surgical trains one named stage + the head, got strategy.train_stages={stage!r}: "
            "name one stage, e.g. strategy.train_stages=stage1 (a wrong name lists the backbone's stages)"
        )
    return (names[0],)


def lora_values(c: Mapping) -> dict:
    targets = c["lora_targets"]
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    lora = Lora(c["lora_rank"], float(c["lora_alpha"]), float(c["lora_dropout"]), targets)
    return {"start": "all", "parameters": "adapters", "lora": lora}


LORA_KEYS = {"lora_rank": "8", "lora_alpha": "16", "lora_dropout": "0.0", "lora_targets": "[conv,linear]"}
PEFT = ("peft", "pip install peft (or pip install 'tlbench[lora]')")

# Least to most of the backbone trained: the order the report lists strategies in.
STRATEGIES: dict[str, Rule] = {
    "freeze": Rule(lambda c: {"start": 0, "probe_epochs": FOREVER}),
    "bitfit": Rule(lambda c: {"start": "all", "parameters": "biases"}),
    "norm": Rule(lambda c: {"start": "all", "parameters": "norms"}),
    "lora": Rule(lora_values, LORA_KEYS, PEFT),
    "surgical": Rule(lambda c: {"start": one_stage(c)}, {"train_stages": "stage1"}),
    "partial": Rule(lambda c: {"start": 1 if c["train_stages"] is None else c["train_stages"]}),
    "gradual": Rule(
        lambda c: {"start": c["train_stages"] or 0, "unfreeze_every": c["unfreeze_every"]},
        {"unfreeze_every": "1"},
    ),
    "lpft": Rule(lambda c: {"start": "all", "probe_epochs": c["lp_epochs"]}, {"lp_epochs": "1"}),
    "full": Rule(lambda c: {"start": "all"}),
    "l2sp": Rule(
        lambda c: {"start": "all", "l2sp": L2SP(float(c["l2sp_alpha"]), float(c["l2sp_beta"]))},
        {"l2sp_alpha": "0.1", "l2sp_beta": "0.01"},
    ),
}


@cache
def _conf_file(group: str, name: str) -> dict:
    # Plain YAML (these groups hold no interpolation): loading a checkpoint to predict needs no OmegaConf.
    return yaml.safe_load((files("tlbench.conf") / group / f"{name}.yaml").read_text())


def with_conf_defaults(group: str, values: Mapping) -> dict:
    """`values` over conf/<group>/<values.name>.yaml (a module built from Python or an old checkpoint)."""
    defaults = _conf_file(group, values["name"])
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise StrategyError(f"unknown {group} setting(s) {unknown}; valid: {', '.join(defaults)}")
    return {**defaults, **values}


def missing_key(settings: Mapping) -> str | None:
    """The one line for the first key the strategy needs that is null (None when none is)."""
    name = settings["name"]
    for key, example in STRATEGIES[name].required_keys.items():
        if settings.get(key) is None:
            return f"strategy={name} needs strategy.{key}, got null: e.g. strategy.{key}={example}"
    return None


def backbone_stage_names(stages: Stages) -> list[str]:
    return [name for name, _ in stages if name != HEAD]


@dataclass(frozen=True)
class Strategy:
    """A strategy, resolved: which stages train each epoch, at which rates, and what frozen BatchNorm does."""

    name: str
    head_lr: float
    backbone_lr: float  # the top backbone stage's; each stage below it × layer_decay (None: the same)
    layer_decay: float | None
    bn: str  # frozen BatchNorm: eval keeps its running statistics, train lets them follow the batch
    train_input_conv: bool  # an input conv adapted to other channels trains (outside a linear probe)
    cache_features: bool | str
    # The schedule (STRATEGIES): for `probe_epochs` epochs only the head trains (a linear probe); then the
    # `start` stages (a count from the top, "all", or names), one more from the top every `unfreeze_every`.
    start: int | str | tuple[str, ...] = 0
    probe_epochs: float = 0
    unfreeze_every: int | None = None
    # Of a training backbone stage, which parameters train: all, biases, norms or adapters (selection.py).
    parameters: str = "all"
    lora: Lora | None = None
    l2sp: L2SP | None = None

    @classmethod
    def from_config(cls, values: Mapping | None) -> Strategy:
        """From the strategy config (a dict of its keys); keys it lacks take conf/strategy/<name>.yaml's."""
        values = {"name": "freeze", **(values or {})}
        if values.get("name") not in STRATEGIES:
            raise StrategyError(
                f"unknown strategy {values.get('name')!r}; choose one of: {', '.join(STRATEGIES)}"
            )
        settings = with_conf_defaults("strategy", values)
        problem = missing_key(settings)
        if problem:
            raise StrategyError(problem)
        schedule = STRATEGIES[settings["name"]].schedule(settings)
        start = schedule["start"]
        if not isinstance(start, int) and start != "all":  # one stage name, or a list of them
            schedule["start"] = (start,) if isinstance(start, str) else tuple(start)
        keys = ("name", "layer_decay", "bn", "train_input_conv", "cache_features")
        # lr_scale multiplies all of a strategy's rates: one tuning value that means the same for every
        # strategy (sweep=fair); 1 in every conf/strategy/*.yaml.
        scale = settings.get("lr_scale", 1.0)
        rates = {"head_lr": settings["head_lr"] * scale, "backbone_lr": settings["backbone_lr"] * scale}
        return cls(**{key: settings[key] for key in keys}, **rates, **schedule)

    @property
    def scheduled(self) -> bool:
        """Its trainable stages change with the epoch: every stage has its optimizer groups from the start."""
        return self.unfreeze_every is not None or 0 < self.probe_epochs < FOREVER

    def stages_at(self, backbone: Sequence[str], epoch: int) -> list[str]:
        """The stages that train during `epoch` (0-based), head included; `backbone`: stem to top."""
        if epoch < self.probe_epochs:
            return [HEAD]
        trained = self.start_stages(backbone)
        if self.unfreeze_every is not None:
            frozen_from_top = [stage for stage in reversed(backbone) if stage not in trained]
            trained += frozen_from_top[: int(epoch - self.probe_epochs) // self.unfreeze_every]
        return [stage for stage in backbone if stage in trained] + [HEAD]

    def start_stages(self, backbone: Sequence[str]) -> list[str]:
        if self.start == "all":
            return list(backbone)
        if isinstance(self.start, int):
            if not 0 <= self.start <= len(backbone):
                raise StrategyError(
                    f"strategy.train_stages={self.start}, but this backbone has {len(backbone)} stages "
                    f"({', '.join(backbone)}); use 0..{len(backbone)} or a list of names"
                )
            return list(backbone[len(backbone) - self.start :])
        unknown = [stage for stage in self.start if stage not in backbone]
        if unknown:
            raise StrategyError(
                f"strategy.train_stages names {unknown}, which this backbone does not have; "
                f"its stages, stem to top: {', '.join(backbone)}"
            )
        return [stage for stage in backbone if stage in self.start]

    def trains_input_conv(self, stages: Sequence[str]) -> bool:
        """An input conv adapted to 1 channel is new: it trains unless told not to, or in a linear probe."""
        return self.train_input_conv and not (self.probe_epochs > 0 and list(stages) == [HEAD])

    def stage_rates(self, backbone: Sequence[str]) -> dict[str, float]:
        """Head at `head_lr`; the top backbone stage at `backbone_lr`, each stage below it × `layer_decay`."""
        decay = self.layer_decay or 1.0
        rates = {name: self.backbone_lr * decay ** (len(backbone) - 1 - i) for i, name in enumerate(backbone)}
        return {**rates, HEAD: self.head_lr}

    def caches_features(self, mixes_images: bool) -> bool:
        """`auto` caches exactly where it equals end-to-end training: a fixed trunk, unblended images."""
        fixed_trunk = self.probe_epochs == FOREVER and self.bn == "eval"
        if self.cache_features is True and not fixed_trunk:
            raise StrategyError(
                "strategy.cache_features=true needs strategy=freeze with strategy.bn=eval "
                f"(got strategy={self.name}, bn={self.bn}): features can be computed once only "
                "when no trunk weight and no BatchNorm statistic changes during training. "
                "Use strategy=freeze, or strategy.cache_features=false."
            )
        if self.cache_features is True and mixes_images:
            raise StrategyError(
                "optim.mixup / optim.cutmix blend training images, which cached trunk features cannot "
                "show: set strategy.cache_features=false (or auto)"
            )
        return fixed_trunk and not mixes_images and self.cache_features is not False

    def check_epochs(self, max_epochs: int | None) -> None:
        """A probe that is to end must leave an epoch of fine-tuning."""
        if max_epochs is not None and 0 < max_epochs <= self.probe_epochs < FOREVER:
            raise StrategyError(
                f"strategy.lp_epochs={self.probe_epochs} leaves no epoch of fine-tuning in "
                f"trainer.max_epochs={max_epochs}; use strategy.lp_epochs < {max_epochs} (or strategy=freeze)"
            )
