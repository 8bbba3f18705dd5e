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
from tlbench.run.cost import RunCost

log = logging.getLogger("tlbench")

LOG_FOLDERS = {"tensorboard": "tb", "csv": "csv"}
# Keys of the trainer config that are tlbench's, not Lightning Trainer arguments.
NOT_TRAINER_ARGUMENTS = ("monitor", "early_stopping_patience")


def trainer_device(options: dict[str, Any]) -> torch.device:
    """The device Lightning trains on with these trainer options, asked of Lightning itself (a bare
    Trainer with the same accelerator and devices), so `auto` means what it means to Lightning and
    `trainer=cpu` on a GPU host is the CPU."""
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


def resolve_precision(precision: Any, device: torch.device) -> str:
    """trainer.precision=auto: bf16-mixed on a CUDA device with bf16 arithmetic in hardware (Ampere and
    newer), else 32-true. Not where torch only emulates bf16 (`is_bf16_supported()` counts that, and it is
    slower than fp32), and not 16-mixed on older GPUs: fp16 needs loss scaling, which skips steps on
    overflow and cannot be graphed, so it would quietly change every run on such a host. Ask for it by
    name (trainer.precision=16-mixed)."""
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
    options["precision"] = resolve_precision(options.get("precision"), trainer_device(options))
    return options


def build_logger(name: str, run_dir: Path, resumed_step: int | None = None):
    """The run's logger. On a resume (`resumed_step`: the global step of last.ckpt) it keeps the history
    logged up to that step — the last validation before the checkpoint is logged at it — and drops what
    came after, which the resumed run logs again: TensorBoard hides those events (purge_step), the CSV
    keeps only the earlier rows (Lightning's CSVLogger would delete them all)."""
    if name == "tensorboard":
        return TensorBoardLogger(
            save_dir=str(run_dir),
            name=LOG_FOLDERS[name],
            version="",
            default_hp_metric=False,
            purge_step=None if resumed_step is None else resumed_step + 1,
        )
    if name == "csv":
        logger = CSVLogger(save_dir=str(run_dir), name=LOG_FOLDERS[name], version="")
        if resumed_step is not None:
            keep_csv_history(logger, resumed_step)
        return logger
    return False  # logger.name=none (the schema allows no other name)


def keep_csv_history(logger: CSVLogger, resumed_step: int) -> None:
    """Carry the rows logged up to `resumed_step` into the resumed run's metrics.csv: Lightning's writer
    removes the file when it starts and writes only what it logs itself."""
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
    """last.ckpt at the moment a signal stops training, so running the same command again continues from
    there. Lightning's OnExceptionCheckpoint saves on any exception and deletes its file at teardown; here
    only a stop asked for by a signal, during fit, is saved (a test-phase stop would save the best weights
    loaded for testing), and the file stays."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # received_sigterm too: SLURM and a terminal signal the data-loader workers as well, and a dead
        # worker can end the fit with its own error before the loop reaches its SIGTERM check.
        signalled = trainer.received_sigterm or isinstance(
            exception, folder.RunInterrupted | KeyboardInterrupt
        )
        if signalled and trainer.state.fn == "fit":
            log.warning("saving %s before stopping", self.ckpt_path)
            super().on_exception(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pass


def resumed_step(cfg: DictConfig, run_dir: Path) -> int | None:
    """The global step train() resumes from (its last.ckpt), or None for a fresh start."""
    last = run_dir / folder.CHECKPOINT_DIR / "last.ckpt"
    if cfg.trainer.fast_dev_run or not last.exists():
        return None
    position = folder.checkpoint_position(last)
    return position[1] if position else None


def build_trainer(cfg: DictConfig, run_dir: Path, cost: RunCost) -> tuple[L.Trainer, ModelCheckpoint]:
    monitor, patience = cfg.trainer.monitor, cfg.trainer.get("early_stopping_patience")
    mode = "min" if monitor.endswith("loss") else "max"
    options = trainer_options(cfg)
    logger = build_logger(cfg.logger.name, run_dir, resumed_step(cfg, run_dir))
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        auto_insert_metric_name=False,
    )
    # Its own callback: ModelCheckpoint(save_last=True) writes last.ckpt only when the best one improves,
    # so resuming from it would repeat every epoch since the best.
    latest = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    recipe = [ema_callback(cfg.optim.get("ema")), early_stopping(monitor, mode, patience)]
    callbacks = [c for c in recipe if c is not None]
    callbacks += [checkpoint, latest, CheckpointOnInterrupt(run_dir / folder.CHECKPOINT_DIR, "last"), cost]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = L.Trainer(default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, **options)
    return trainer, checkpoint


def log_hparams(trainer: L.Trainer, params: dict, metrics: dict[str, float]) -> None:
    """One HParams entry per run, with its final metrics, so TensorBoard compares runs side by side."""
    if isinstance(trainer.logger, TensorBoardLogger):
        hparams = {k: ("null" if v is None else v) for k, v in params.items()}
        trainer.logger.log_hyperparams(hparams, {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items()})
