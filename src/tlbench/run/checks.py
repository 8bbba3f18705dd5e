"""The whole config, checked once before anything runs (or is removed): one line naming the key and the fix.
Beyond the schema: values that depend on each other, the files they name, the backbone's name and weights."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tlbench.config.schema import TWO_CLASS_METRICS, ConfigError, RunConfig, parse
from tlbench.models.backbones import get_preset
from tlbench.models.strategies import STRATEGIES, missing_key


def check_config(cfg: DictConfig) -> RunConfig:
    """The typed config, or ConfigError for the first value that cannot run."""
    run = parse(RunConfig, OmegaConf.to_container(cfg, resolve=True))
    data, strategy = run.data, run.strategy
    if data.source == "imagefolder":
        if not data.root:
            raise ConfigError("data=imagefolder needs data.root=<folder of class folders (or train/ val/)>")
        if not Path(data.root).expanduser().is_dir():
            raise ConfigError(
                f"data.root={data.root} does not exist (or is not a folder); point it at your images"
            )
    if data.folds is None and data.fold != 0:
        raise ConfigError(
            f"data.fold={data.fold} needs data.folds=K (k-fold cross-validation); set data.folds"
        )
    if data.folds is not None and data.fold >= data.folds:
        raise ConfigError(f"data.fold must be between 0 and data.folds-1={data.folds - 1}, got {data.fold}")
    problem = missing_key(dataclasses.asdict(strategy))
    if problem:
        raise ConfigError(problem)
    package = STRATEGIES[strategy.name].package
    if package and importlib.util.find_spec(package[0]) is None:
        raise ConfigError(f"strategy={strategy.name} needs the {package[0]} package: {package[1]}")
    if run.tune.min_lr >= run.tune.max_lr:
        raise ConfigError(f"tune.min_lr ({run.tune.min_lr}) must be below tune.max_lr ({run.tune.max_lr})")
    checkpoint = run.backbone.checkpoint
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            raise ConfigError(f"backbone.checkpoint={checkpoint} is a folder; give the weights file in it")
        if not path.is_file():
            raise ConfigError(f"backbone.checkpoint={checkpoint}: no such file; check the path")
    try:  # the name and weights tag, from metadata only (no download, no model)
        get_preset(run.backbone.name, run.backbone.weights, run.data.in_chans)
    except ValueError as error:
        raise ConfigError(
            f"backbone.name={run.backbone.name} / backbone.weights={run.backbone.weights}: {error}"
        ) from None
    return run


def check_against_data(run: RunConfig, num_classes: int) -> None:
    """The values that depend on how many classes the data has, checked before a network is built."""
    positive = run.data.positive_class
    if not positive < num_classes:
        raise ConfigError(
            f"data.positive_class={positive} is out of range: the data has {num_classes} classes; "
            f"use 0..{num_classes - 1}"
        )
    metric = run.trainer.monitor.removeprefix("val/")
    if metric in TWO_CLASS_METRICS and num_classes != 2:
        raise ConfigError(
            f"trainer.monitor={run.trainer.monitor} is logged for two classes only, the data has "
            f"{num_classes}; use trainer.monitor=val/acc"
        )
    if metric == "top5" and num_classes < 10:
        raise ConfigError(
            f"trainer.monitor=val/top5 is logged from 10 classes on, the data has {num_classes}; "
            "use trainer.monitor=val/acc"
        )
