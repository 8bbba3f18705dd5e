"""trainer.budget_steps: a training length in optimizer steps, not epochs, so runs on 10 and on 300 images
per class get the same number of updates (a learning curve then compares strategies, not step counts).

The budget becomes a whole number of epochs for this run's training split — ceil(budget / steps per
epoch), at least trainer.budget_min_epochs — and the run trains those epochs: everything counted in epochs
(unfreezing schedules, lpft's probe, validation, checkpoints, early stopping) works as it does without a
budget, the LR schedule spans exactly those epochs' steps, and the steps taken match the budget to within
one epoch (one validation interval past 19 epochs). results.json records the epochs and the optimizer
steps taken."""

from __future__ import annotations

import copy
import logging
import math

from omegaconf import DictConfig, open_dict

from tlbench.config.schema import TrainerConfig

log = logging.getLogger(__name__)


def steps_per_epoch(train_images: int, batch_size: int, trainer: TrainerConfig, devices: int = 1) -> int:
    """Optimizer steps in one epoch: the loader keeps a last partial batch (no drop_last), DDP shards the
    split over `devices`, limit_train_batches (a count or a fraction, as Lightning reads it) caps it."""
    batches = math.ceil(math.ceil(train_images / max(1, devices)) / batch_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, float):
        batches = int(batches * limit)
    elif isinstance(limit, int):
        batches = min(batches, limit)
    return max(1, batches)


# A budget run validates about this often, however many epochs it takes: 150 epochs of 10 images per class
# validating every epoch would spend far more time on the (fixed-size) validation split than on training.
VALIDATIONS = 10


def budget_epochs(budget_steps: int, per_epoch: int, min_epochs: int) -> tuple[int, int]:
    """(epochs, validate every n epochs): the fewest whole epochs that reach the budget, at least
    `min_epochs`, rounded up to a multiple of the validation interval so the last epoch is validated
    (over the budget by less than one interval: under 10% of the epochs, none up to 19 epochs)."""
    epochs = max(min_epochs, math.ceil(budget_steps / per_epoch))
    every = max(1, epochs // VALIDATIONS)
    return math.ceil(epochs / every) * every, every


def apply_budget(cfg: DictConfig, trainer: TrainerConfig, train_images: int, batch_size: int) -> DictConfig:
    """`cfg` with trainer.max_epochs (and the validation interval) from the budget, as a copy; `cfg` itself
    when there is no budget."""
    if trainer.budget_steps is None:
        return cfg
    devices = trainer.devices if isinstance(trainer.devices, int) else 1
    per_epoch = steps_per_epoch(train_images, batch_size, trainer, devices)
    epochs, every = budget_epochs(trainer.budget_steps, per_epoch, trainer.budget_min_epochs)
    log.info(
        "trainer.budget_steps=%d: %d epochs of %d steps (%d images, batch %d) = %d optimizer steps, "
        "validating every %d epoch(s)",
        trainer.budget_steps, epochs, per_epoch, train_images, batch_size, epochs * per_epoch, every,
    )  # fmt: skip
    cfg = copy.deepcopy(cfg)  # the caller's config (and the saved run_config.json) keep the budget alone
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
        cfg.trainer.check_val_every_n_epoch = every  # a Lightning Trainer argument
    return cfg
