"""The whole config, checked once before anything runs (or is removed): one line naming the key and the fix.
Beyond the schema: values that depend on each other, the files they name, the backbone's name and weights."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tlbench.config.schema import TWO_CLASS_METRICS, ConfigError, RunConfig, parse
from tlbench.data.sources import expand_path
from tlbench.models.backbones import get_preset
from tlbench.models.strategies import HEAD, STRATEGIES, Stages, Strategy, backbone_stage_names, missing_key

# The data the README and experiments use, by folder name: where to get it when the folder is missing.
HYMENOPTERA = (
    "; the ants/bees images: `make hymenoptera-data` in the repository (downloads "
    "https://download.pytorch.org/tutorial/hymenoptera_data.zip into data/, or links "
    "../shared/data/hymenoptera where present), or unzip that file and set data.root=<its hymenoptera_data>"
)
WHERE_TO_GET = {"hymenoptera_data": HYMENOPTERA, "hymenoptera": HYMENOPTERA}


def check_config(cfg: DictConfig) -> RunConfig:
    """The typed config, or ConfigError for the first value that cannot run."""
    run = parse(RunConfig, OmegaConf.to_container(cfg, resolve=True))
    data, strategy = run.data, run.strategy
    if data.source == "imagefolder":
        if not data.root:
            raise ConfigError("data=imagefolder needs data.root=<folder of class folders (or train/ val/)>")
        root = expand_path(data.root)
        if not root.is_dir():
            where = root.absolute()  # relative roots are read from the working directory: say which
            shown = data.root if str(where) == data.root else f"{data.root} ({where})"
            raise ConfigError(
                f"data.root={shown} does not exist (or is not a folder); point it at your images"
                + WHERE_TO_GET.get(where.name, "")
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
    check_accelerator(run.trainer.accelerator, run.trainer.devices)
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


# What each trainer.accelerator needs, as the error names it.
DEVICE_KINDS = {
    "gpu": "a CUDA or Apple MPS GPU",
    "cuda": "a CUDA GPU",
    "mps": "an Apple MPS GPU",
    "tpu": "a TPU (with torch_xla installed)",
}


def available_devices(accelerator: str) -> int:
    """How many devices of this kind Lightning can use here, asked without starting CUDA (Lightning sets
    PYTORCH_NVML_BASED_CUDA_CHECK, so torch counts GPUs through NVML); 0 when the backend is missing."""
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    try:
        if accelerator in ("cuda", "gpu") and CUDAAccelerator.is_available():
            return CUDAAccelerator.auto_device_count()
        if accelerator in ("mps", "gpu") and MPSAccelerator.is_available():
            return 1
        if accelerator == "tpu" and XLAAccelerator.is_available():
            return XLAAccelerator.auto_device_count()
    except Exception:  # noqa: BLE001 - a backend that cannot even be asked is not available
        return 0
    return 0


def check_accelerator(accelerator: str, devices: int | str | tuple[int, ...]) -> None:
    """trainer.accelerator names a device this machine has (else Lightning fails once the data are loaded,
    33 lines deep), and trainer.devices asks for no more of them than it has."""
    if accelerator in ("auto", "cpu"):
        return
    count = available_devices(accelerator)
    if count == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs {DEVICE_KINDS[accelerator]} and this machine has none; "
            "use trainer.accelerator=auto (a GPU when there is one, else the CPU) or trainer.accelerator=cpu"
        )
    wanted = max(devices) + 1 if isinstance(devices, tuple) else devices
    if isinstance(wanted, int) and wanted > count:
        raise ConfigError(
            f"trainer.devices={devices} asks for more {accelerator} devices than the {count} this machine "
            f"has; use trainer.devices=auto or at most {count}"
        )


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


class CheckOutputFolder(Callback):
    """Hydra creates the run (or sweep) folder before tlbench's code runs, so a read-only parent, or a file
    where a folder should be, ends in Hydra's own traceback; checked here first, as one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        from tlbench.run.folder import RunFolderError, check_writable

        try:
            # The default name reads ${hydra:runtime.choices...}: resolvable once HydraConfig holds this
            # config, as run_job sets it right after this callback anyway.
            HydraConfig.instance().set_config(config)
            where = Path(str(OmegaConf.select(config, key))).absolute()
        except Exception:  # noqa: BLE001 - a folder name Hydra cannot resolve yet is Hydra's to report
            return
        try:
            check_writable(where, key)
        except RunFolderError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)


# key=~/path: the shell leaves ~ alone after a dotted key (zsh and bash alike), and Hydra's override
# grammar rejects it ("LexerNoViableAltException ... ^" under the ~).
_TILDE_OVERRIDE = re.compile(r"^(\+{0,2}[A-Za-z_][\w.\-/@]*)=(~.*)$")
_HYDRA_SPECIAL = set("()[]{}'\"\\=,:$ ")


def expand_tilde_overrides(argv: list[str]) -> list[str]:
    """Command-line overrides with a value starting with ~ (each of a sweep's comma-separated values)
    expanded to the home folder, as the shell does for a plain assignment; quoted for Hydra when needed."""
    expanded = []
    for arg in argv:
        match = _TILDE_OVERRIDE.match(arg)
        if not match:
            expanded.append(arg)
            continue
        values = []
        for value in match.group(2).split(","):
            path = os.path.expanduser(value) if value.startswith("~") else value
            if path != value and _HYDRA_SPECIAL & set(path):
                path = "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
            values.append(path)
        expanded.append(f"{match.group(1)}={','.join(values)}")
    return expanded


def frozen_random_stages(
    run: RunConfig, strategy: Strategy, backbone: Sequence[str]
) -> tuple[list[str], str]:
    """The backbone stages a strategy starts with frozen although nothing pretrained was loaded
    (backbone.weights=null, no backbone.checkpoint), and one line to warn with ("" when none). A frozen
    random trunk feeds noise to what trains: the run ends near chance, predicting one class, without error.
    Read from the strategy's schedule (epoch 0 and the last epoch), never from its name."""
    if run.backbone.weights or run.backbone.checkpoint:
        return [], ""
    at_start = strategy.stages_at(backbone, 0)
    # bitfit, norm, lora: a training stage keeps its (random) weights, only a selection of them trains.
    selective = strategy.parameters != "all"
    frozen = [stage for stage in backbone if stage not in at_start or selective]
    if strategy.l2sp and not frozen:  # nothing frozen, but the penalty pulls towards the random start
        return [], (
            f"backbone.weights=null: strategy={strategy.name} pulls every weight towards its starting value, "
            "which is random here (plain L2 towards noise); load pretrained weights (backbone.checkpoint="
            "/path/to/weights.pth, or backbone.weights=DEFAULT online) or use strategy=full"
        )
    if not frozen:
        return [], ""
    at_end = strategy.stages_at(backbone, run.trainer.max_epochs - 1)
    how_long = "stay frozen" if selective or all(s not in at_end for s in frozen) else "start frozen"
    trained = ", ".join(s for s in at_start if s != HEAD) or "only the head"
    if selective:
        trained = f"only the {strategy.parameters} of {trained}"
    return frozen, (
        f"backbone.weights=null: stages {', '.join(frozen)} {how_long} (strategy={strategy.name}; "
        f"training {trained}{'' if trained == 'only the head' else ' + head'}) but are randomly initialised, "
        "so what trains learns from random features (near-chance accuracy); load pretrained weights "
        "(backbone.checkpoint=/path/to/weights.pth, or backbone.weights=DEFAULT online) or use strategy=full"
    )


def warn_frozen_random(run: RunConfig, strategy: Strategy, stages: Stages) -> list[str]:
    """`frozen_random_stages` of a built network, its warning logged at the start of the run."""
    frozen, warning = frozen_random_stages(run, strategy, backbone_stage_names(stages))
    if warning:
        logging.getLogger("tlbench").warning(warning)
    return frozen
