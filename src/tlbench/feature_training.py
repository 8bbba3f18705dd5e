"""strategy.cache_features=true: the freeze strategy's head, trained on cached trunk features.

With strategy=freeze and bn=eval the trunk is a fixed function, so `trainer.fit` would recompute the same
features every epoch (features.py; its test checks the two heads agree weight for weight). Here the train
images are embedded once — once per epoch when augmentation is on, so every epoch still sees its own
random view — and only the head trains. What fit leaves behind is left here too: `best.ckpt` and
`last.ckpt` written through the trainer, the checkpoint callback's best path and score, train images/s and
the last validation metrics, so testing and results.json go on exactly as after a fit.

Where it differs from end-to-end freeze training: the head trains with AdamW at a constant
strategy.head_lr, weight decay on its bias too (optim.scheduler and optim.name are not applied); the best
epoch is picked by val/acc or val/loss on cached validation features (any other monitor: the last epoch);
and the trunk runs in eval mode, so dropout / stochastic depth inside a trunk (VGG, EfficientNet,
MobileNet, ViT) is off while features are made. Every epoch's features are kept on the device at once
(epochs × train images × feature_dim floats: 49 MB for 10 × 2,400 × 512).
"""

from __future__ import annotations

import copy
import logging
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from tlbench.data import ImageDataModule
from tlbench.features import extract_features, train_head_on_features
from tlbench.module import TransferModule
from tlbench.results import RunCost
from tlbench.strategies import StrategyError

log = logging.getLogger(__name__)
# The validation scores that can be computed from cached features; any other monitor keeps the last epoch.
CHEAP_MONITORS = ("val/acc", "val/loss")


@torch.no_grad()
def cached_score(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, monitor: str) -> float:
    logits = head(features)
    if monitor == "val/loss":
        return F.cross_entropy(logits, labels).item()
    return (logits.argmax(1) == labels).float().mean().item()


def fit_on_cached_features(
    trainer: L.Trainer,
    module: TransferModule,
    datamodule: ImageDataModule,
    checkpoint: ModelCheckpoint,
    cost: RunCost,
) -> None:
    """In place of `trainer.fit(module, datamodule)` for strategy.cache_features=true."""
    if trainer.world_size > 1:
        raise StrategyError("strategy.cache_features=true trains on one device; set trainer.devices=1")
    if module.optim["scheduler"] not in (None, "none") or module.optim["name"] != "adamw":
        log.warning(
            "strategy.cache_features trains the head with AdamW at a constant strategy.head_lr; "
            "optim=%s with scheduler=%s is not applied",
            module.optim["name"],
            module.optim["scheduler"],
        )
    device = trainer.strategy.root_device
    amp = "bf16" in str(trainer.precision)
    epochs = trainer.max_epochs
    augmented = tuple(datamodule.train_crop_scale) != (1.0, 1.0) or datamodule.hflip
    trunk = module.net.to(device).trunk
    if device.type == "cuda":
        trunk.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    train_loader = datamodule.ordered_loader("train", device)
    views = [
        extract_features(trunk, train_loader, device=device, amp=amp)
        for _ in range(epochs if augmented else 1)
    ]
    labels = datamodule.labels("train").to(device)
    val_features = extract_features(trunk, datamodule.ordered_loader("val", device), device=device, amp=amp)
    val_labels = datamodule.labels("val").to(device)
    sign = 1.0 if checkpoint.mode == "max" else -1.0
    best = {"epoch": -1, "score": None, "head": None}

    def keep_best(epoch: int, head: nn.Linear) -> None:
        if checkpoint.monitor not in CHEAP_MONITORS:
            return
        score = cached_score(head, val_features, val_labels, checkpoint.monitor)
        if best["score"] is None or sign * score > sign * best["score"]:
            best.update(epoch=epoch, score=score, head=copy.deepcopy(head.state_dict()))

    train_head_on_features(
        views,
        labels,
        epochs=epochs,
        lr=module.strategy["head_lr"],
        weight_decay=module.optim["weight_decay"],
        batch_size=datamodule.batch_size,
        seed=datamodule.seed,
        head=module.net.head,
        on_epoch_end=keep_best,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cost.train_images += len(labels) * epochs
    cost.train_seconds += time.perf_counter() - started
    log.info(
        "head trained on cached features: %d epoch(s), %d view(s); best %s at epoch %d",
        epochs,
        len(views),
        checkpoint.monitor,
        best["epoch"],
    )

    # The last head, validated through the network as fit's last epoch would be; then the best one. The
    # callback's best path and score are set first: they are saved in (and restored from) both files.
    trainer.validate(module, datamodule=datamodule, verbose=False)
    if best["score"] is None:
        best["score"] = float(trainer.callback_metrics[checkpoint.monitor])
    checkpoint.best_model_path = f"{checkpoint.dirpath}/best.ckpt"
    checkpoint.best_model_score = torch.tensor(best["score"])
    trainer.save_checkpoint(f"{checkpoint.dirpath}/last.ckpt")
    if best["head"] is not None:
        module.net.head.load_state_dict(best["head"])
    trainer.save_checkpoint(checkpoint.best_model_path)
