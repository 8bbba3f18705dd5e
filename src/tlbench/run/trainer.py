"""The Lightning Trainer of a run: its options (precision resolved for the device Lightning chose), its
logger (which keeps the history before a resume), and its checkpoints (best, last, and last on a signal)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from tlbench.models.recipes import early_stopping, ema_callback
from tlbench.run import folder
from tlbench.run.checkpoints import AtomicCheckpointIO, RunCheckpoint
from tlbench.run.cost import RunCost
from tlbench.run.progress import EpochLog, show_progress_bar

log = logging.getLogger("tlbench")

LOG_FOLDERS = {"tensorboard": "tb", "csv": "csv"}
# Keys of the trainer config that are tlbench's, not Lightning Trainer arguments.
NOT_TRAINER_ARGUMENTS = ("monitor", "early_stopping_patience", "budget_steps", "budget_min_epochs")


def trainer_device(options: dict[str, Any]) -> torch.device:
    """The device Lightning trains on with these options, asked of a bare Trainer."""
    chosen = {k: options[k] for k in ("accelerator", "devices") if k in options}
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)  # its "GPU available" lines come once, from the real trainer
    try:
        probe = L.Trainer(
            **chosen, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
    finally:
        rank_zero.setLevel(level)
    return probe.strategy.root_device


def resolve_precision(precision: Any, device: torch.device | None) -> str:
    """trainer.precision=auto: bf16-mixed where CUDA has bf16 in hardware (emulated bf16 is slower than
    fp32), else 32-true. Never 16-mixed: its loss scaling skips steps and cannot be graphed, which would
    quietly change every run on an older GPU; ask for it by name."""
    if precision not in (None, "auto"):
        return str(precision)
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16-mixed"
    return "32-true"


def trainer_options(cfg: DictConfig) -> dict[str, Any]:
    """cfg.trainer as Lightning Trainer arguments, with precision=auto resolved."""
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in NOT_TRAINER_ARGUMENTS:
        options.pop(key, None)
    precision = options.get("precision")
    # Only `auto` depends on the device: an explicit precision needs no probe Trainer.
    device = trainer_device(options) if precision in (None, "auto") else None
    options["precision"] = resolve_precision(precision, device)
    options["enable_progress_bar"] = show_progress_bar(options.get("enable_progress_bar", True))
    # Lightning's model summary repeats the parameter counts train.py logs (with the stages that train)
    # and shows 0 FLOPs for a module without an example input: tlbench's line replaces it.
    options["enable_model_summary"] = False
    return options


def build_logger(name: str, run_dir: Path, resumed_step: int | None = None):
    """The run's logger. On a resume (`resumed_step`: last.ckpt's global step) it keeps the history up to
    that step and drops what came after, which the resumed run logs again: TensorBoard by purge_step, the
    CSV by keeping the earlier rows (Lightning's CSVLogger would delete them all)."""
    if name == "tensorboard":
        purge = None if resumed_step is None else resumed_step + 1
        return TensorBoardLogger(
            str(run_dir), LOG_FOLDERS[name], "", default_hp_metric=False, purge_step=purge
        )
    if name == "csv":
        logger = CSVLogger(save_dir=str(run_dir), name=LOG_FOLDERS[name], version="")
        if resumed_step is not None:
            keep_csv_history(logger, resumed_step)
        return logger
    return False  # logger.name=none (the schema allows no other name)


def keep_csv_history(logger: CSVLogger, resumed_step: int) -> None:
    """Keep metrics.csv's rows up to `resumed_step` (Lightning's writer removes the file when it starts)."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = [
            {k: v for k, v in row.items() if v != ""}
            for row in csv.DictReader(handle)
            if row.get("step", "").isdigit() and int(row["step"]) <= resumed_step
        ]
    logger.experiment.metrics[:0] = rows  # the writer starts now (and removes the file); rows go first


class CheckpointOnInterrupt(OnExceptionCheckpoint):
    """last.ckpt when a signal stops training, so the same command continues from there. Unlike Lightning's
    OnExceptionCheckpoint, only a signal during fit saves (in test it would save the best weights loaded
    for testing), and the file stays after teardown."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # received_sigterm too: a signalled loader worker can end the fit with its own error first.
        signalled = trainer.received_sigterm or isinstance(
            exception, folder.RunInterrupted | KeyboardInterrupt
        )
        if signalled and trainer.state.fn == "fit":
            log.warning("saving %s before stopping", self.ckpt_path)
            super().on_exception(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pass


def resumed_step(resume: Path | None) -> int | None:
    """The global step train() resumes from (the checkpoint it continues), or None for a fresh start."""
    position = folder.checkpoint_position(resume) if resume is not None else None
    return position[1] if position else None


def build_trainer(
    cfg: DictConfig, run_dir: Path, cost: RunCost, resume: Path | None = None
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The run's Trainer and its best-checkpoint callback; `resume`: the checkpoint fit continues from."""
    monitor, patience = cfg.trainer.monitor, cfg.trainer.get("early_stopping_patience")
    mode = "min" if monitor.endswith("loss") else "max"
    options = trainer_options(cfg)
    logger = build_logger(cfg.logger.name, run_dir, resumed_step(resume))
    # RunCheckpoint: ModelCheckpoint whose stored paths follow a copied or moved run folder (checkpoints.py).
    checkpoint = RunCheckpoint(
        run_dir / "checkpoints", "best", monitor, mode=mode, auto_insert_metric_name=False
    )
    # Its own callback: save_last=True writes last.ckpt only when the best improves (a resume would repeat).
    latest = RunCheckpoint(run_dir / "checkpoints", "last", monitor=None, enable_version_counter=False)
    recipe = [ema_callback(cfg.optim.get("ema")), early_stopping(monitor, mode, patience)]
    callbacks = [c for c in recipe if c is not None]
    callbacks += [checkpoint, latest, CheckpointOnInterrupt(run_dir / folder.CHECKPOINT_DIR, "last"), cost]
    callbacks.append(EpochLog(monitor, mode))
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    # Every checkpoint is written beside its target and renamed over it: a failed save keeps the previous one.
    plugins = [AtomicCheckpointIO()]
    trainer = L.Trainer(
        default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, plugins=plugins, **options
    )
    return trainer, checkpoint


def log_hparams(trainer: L.Trainer, params: dict, metrics: dict[str, float]) -> None:
    """One HParams entry per run, with its final metrics, so TensorBoard compares runs side by side."""
    if isinstance(trainer.logger, TensorBoardLogger):
        hparams = {k: ("null" if v is None else v) for k, v in params.items()}
        trainer.logger.log_hyperparams(hparams, {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items()})
