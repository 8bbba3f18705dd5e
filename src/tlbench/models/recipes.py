"""Recipe pieces that are one config value each, built from Lightning's and torchvision's own parts:

optim.mixup / optim.cutmix     blend pairs of training images and their labels (v2.MixUp / v2.CutMix)
optim.ema                      evaluate and checkpoint an exponential moving average of the weights
trainer.early_stopping_patience  stop when the monitored validation metric stops improving"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torchvision.transforms import v2 as T


class RecipeError(ValueError):
    """A recipe value that cannot run; the message names the key and what to do."""


def batch_mixing(mixup: Any, cutmix: Any, num_classes: int) -> T.Transform | None:
    """The transform that mixes a training batch (None when both are 0); both set: one at random, as timm."""
    mixers = []
    if mixup > 0:
        mixers.append(T.MixUp(alpha=float(mixup), num_classes=num_classes))
    if cutmix > 0:
        mixers.append(T.CutMix(alpha=float(cutmix), num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else T.RandomChoice(mixers)


class EvaluatedEMA(EMAWeightAveraging):
    """Lightning's EMA callback, with the average as *the* model everywhere it is evaluated.

    Lightning validates and checkpoints the average, but its `on_load_checkpoint` puts the live weights back
    also when `trainer.test(ckpt_path=best)` loads a checkpoint after fit: here only while fitting, so testing
    and `predict` see the average."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def ema_callback(decay: Any) -> EvaluatedEMA | None:
    """optim.ema: the average's decay per optimizer step (null = off). It weighs roughly the last
    1 / (1 - decay) steps: 0.99 ≈ 100 steps; keep that well under the run's total steps."""
    if decay is None:
        return None
    return EvaluatedEMA(decay=float(decay))


def early_stopping(monitor: str, mode: str, patience: Any) -> EarlyStopping | None:
    """trainer.early_stopping_patience: epochs without a better `trainer.monitor` (null = off)."""
    if patience is None:
        return None
    return EarlyStopping(monitor=monitor, mode=mode, patience=patience)
