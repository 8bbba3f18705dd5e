"""The learning-rate range test (`python -m tlbench.train ... tune.lr_find=true`), per-stage groups kept.
Lightning's `lr_find` sets *every* parameter group to the swept rate, erasing the strategy's head_lr :
backbone_lr ratio (and layer_decay): here each group keeps its ratio to the swept head_lr. It trains the
strategy's first phase, restores the weights, and writes lr_find.json and lr_find.png, no results.json."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import LearningRateFinder

from tlbench.models.recipes import RecipeError
from tlbench.results.files import write_atomic

log = logging.getLogger(__name__)
LR_FIND_FILE = "lr_find.json"
LR_FIND_PLOT = "lr_find.png"


class GroupRatioLRFinder(LearningRateFinder):
    """Lightning's LR finder, with an optimizer step pre-hook scaling each group by (its configured rate /
    head_lr): on the optimizer, because the finder replaces the trainer's callbacks while it runs."""

    def __init__(self, head_lr: float, **finder_options: Any):
        super().__init__(**finder_options)
        self.head_lr = head_lr

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        # `initial_lr` is the configured rate where a scheduler (warm-up) has already scaled `lr`.
        factors = [g.get("initial_lr", g["lr"]) / self.head_lr for g in optimizer.param_groups]

        def keep_ratios(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            swept = trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
            for group, factor in zip(opt.param_groups, factors, strict=True):
                group["lr"] = swept * factor

        hook = optimizer.register_step_pre_hook(keep_ratios)
        try:
            self.lr_find(trainer, pl_module)
        finally:
            hook.remove()
        trainer.should_stop = True


def find_learning_rate(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer_options: dict,
    strategy: dict,
    tune: dict,
    run_dir: Path,
) -> dict[str, Any]:
    """Run the range test with the run's own module and data; write and return the suggestion."""
    if trainer_options.get("fast_dev_run"):
        raise RecipeError("tune.lr_find=true needs real steps: leave trainer.fast_dev_run=false")
    # The rates the run trains at: strategy.lr_scale multiplies both (models/strategies.py).
    scale = float(strategy.get("lr_scale") or 1.0)
    head_lr, backbone_lr = strategy["head_lr"] * scale, strategy["backbone_lr"] * scale
    finder = GroupRatioLRFinder(
        head_lr,
        min_lr=tune["min_lr"],
        max_lr=tune["max_lr"],
        num_training_steps=tune["num_training"],
        update_attr=False,  # the suggestion is reported, never applied behind the user's back
    )
    options = {
        **trainer_options,
        # Enough epochs for the range test's steps on any data size; validation is of no use to it.
        "max_epochs": 1_000_000,
        "max_steps": -1,
        "check_val_every_n_epoch": 1_000_000,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        "logger": False,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(default_root_dir=str(run_dir), callbacks=[finder], **options)
    trainer.fit(module, datamodule=datamodule)
    results = finder.optimal_lr.results
    suggestion = finder.optimal_lr.suggestion()
    if suggestion is None or not math.isfinite(suggestion):
        raise RecipeError(
            f"the LR range test ended with too few finite losses to suggest a rate ({len(results['loss'])} "
            "steps): raise tune.num_training, lower tune.max_lr, or use more training images"
        )
    head, backbone = suggestion, suggestion * backbone_lr / head_lr
    found = {
        "suggestion": {"head_lr": head, "backbone_lr": backbone},
        # absolute rates: with a scale left in place they would be scaled a second time
        "override": f"strategy.head_lr={head:.3g} strategy.backbone_lr={backbone:.3g}"
        + (" strategy.lr_scale=1" if scale != 1.0 else ""),
        "configured": {"head_lr": head_lr, "backbone_lr": backbone_lr},
        "swept": "head_lr; every parameter group kept at its configured ratio to it",
        "min_lr": tune["min_lr"],
        "max_lr": tune["max_lr"],
        "steps": len(results["lr"]),
        "lr": [float(v) for v in results["lr"]],
        "loss": [float(v) for v in results["loss"]],
    }
    write_atomic(run_dir / LR_FIND_FILE, json.dumps(found, indent=2))
    figure = finder.optimal_lr.plot(suggest=True)
    figure.axes[0].set_xlabel("head learning rate (other groups at their configured ratio)")
    write_atomic(run_dir / LR_FIND_PLOT, lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)
    return found


def summary_line(found: dict, run_dir: Path) -> str:
    return (
        f"LR range test: suggested head_lr {found['suggestion']['head_lr']:.3g} "
        f"(configured {found['configured']['head_lr']:g}); train with:\n  {found['override']}\n"
        f"curve and numbers: {run_dir / LR_FIND_PLOT}, {run_dir / LR_FIND_FILE}"
    )
