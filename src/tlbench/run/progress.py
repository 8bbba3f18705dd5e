"""What a run shows while it trains: Lightning's progress bar where someone watches a terminal, and one log
line per epoch everywhere (train.log, a redirected SLURM/nohup stream, a notebook), so a run that takes an
hour says how far it is and when it will end."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import IO

import lightning as L

log = logging.getLogger(__name__)

# A long epoch also says how far it is, at most this often (a line per batch would flood a log file).
WITHIN_EPOCH_EVERY_S = 300.0


def is_terminal(stream: IO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


def show_progress_bar(wanted: bool) -> bool:
    """trainer.enable_progress_bar=true: a live bar only where both output streams are a terminal (Lightning
    draws it on stdout with rich, on stderr with tqdm). Redirected, a bar's redraws become lines thousands of
    characters long (or one wrapped block at the end); the epoch lines of `EpochLog` say it instead."""
    return wanted and is_terminal(sys.stdout) and is_terminal(sys.stderr)


def duration(seconds: float) -> str:
    """`1:02:03` / `2:03`: what a person reads at a glance in a log line."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class EpochLog(L.Callback):
    """One INFO line per training epoch (rank zero): losses, validation metrics with the monitored metric's
    best so far (the checkpoint that will be tested), train images per second, the epoch's time and the
    time left, e.g.

        epoch 3/10 | train loss 0.412 acc 0.871 | val loss 0.388 acc 0.948 (new best) | 352 img/s |
            0:07/epoch, ETA 0:49   (one line)

    A callback beside the progress bar, not the bar's metrics: a bar shows nothing in a log file."""

    def __init__(self, monitor: str, mode: str, every_s: float = WITHIN_EPOCH_EVERY_S) -> None:
        self.monitor, self.mode, self.every_s = monitor, mode, every_s
        self.best: float | None = None
        self.epoch_started = self.last_line = self.epoch_seconds = 0.0
        self.epochs_done = self.images = 0
        self.train_seconds: float | None = None  # this epoch's training time, its validation left out

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed: the best so far is the restored checkpoint callback's (ModelCheckpoint saves after us).
        checkpoint = trainer.checkpoint_callback
        score = getattr(checkpoint, "best_model_score", None)
        same = getattr(checkpoint, "monitor", None) == self.monitor
        self.best = float(score) if same and score is not None else None
        self.epoch_seconds, self.epochs_done = 0.0, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_started = self.last_line = time.perf_counter()
        self.images, self.train_seconds = 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[1])
        now = time.perf_counter()
        if trainer.is_global_zero and now - self.last_line >= self.every_s:
            self.last_line = now
            total = trainer.num_training_batches
            of = f"/{total}" if isinstance(total, int) else ""
            rate = self.images / max(now - self.epoch_started, 1e-9)
            epoch = f"{trainer.current_epoch + 1}/{trainer.max_epochs}"
            say(trainer, f"epoch {epoch}: batch {batch_idx + 1}{of}, {rate:.0f} img/s")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.epoch_started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self.epochs_done += 1
        self.epoch_seconds += now - self.epoch_started
        if trainer.is_global_zero:
            say(trainer, self.line(trainer, now))

    def line(self, trainer: L.Trainer, now: float) -> str:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if train := shown(metrics, "train", ("loss", "acc")):
            parts.append(f"train {train}")
        if val := shown(metrics, "val", ("loss", "acc", self.monitor.removeprefix("val/"))):
            parts.append(f"val {val}{self.best_note(metrics.get(self.monitor))}")
        seconds = self.train_seconds if self.train_seconds is not None else now - self.epoch_started
        if self.images and seconds > 0:
            parts.append(f"{self.images / seconds:.0f} img/s")
        per_epoch = self.epoch_seconds / max(self.epochs_done, 1)  # validation in, sanity check and setup out
        left = max(trainer.max_epochs - trainer.current_epoch - 1, 0)
        parts.append(f"{duration(now - self.epoch_started)}/epoch, ETA {duration(per_epoch * left)}")
        return " | ".join(parts)

    def best_note(self, value: float | None) -> str:
        """` (new best)` or ` (best acc 0.951)`: the monitored metric's best so far (the tested epoch)."""
        if value is None or not math.isfinite(value):
            return ""
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best = value
            return " (new best)"
        return f" (best {self.monitor.removeprefix('val/')} {self.best:.3f})"


def say(trainer: L.Trainer, line: str) -> None:
    """`line` at INFO in the tlbench log. With a live progress bar (a terminal) the console copy goes through
    the bar, printed above it, and only the log's files get the record: a plain write would land inside the
    bar's redrawn lines."""
    bar = trainer.progress_bar_callback
    if bar is None or not bar.is_enabled:
        log.info("%s", line)
        return
    bar.print(line)
    if log.isEnabledFor(logging.INFO):
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (line,), None)
        for handler in file_handlers(log):
            if record.levelno >= handler.level:
                handler.handle(record)


def file_handlers(logger: logging.Logger | None) -> list[logging.FileHandler]:
    """The file handlers a record of `logger` reaches (its own, then its ancestors' while it propagates)."""
    found = []
    while logger is not None:
        found += [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
        logger = logger.parent if logger.propagate else None
    return found


def shown(metrics: dict[str, float], stage: str, names: tuple[str, ...]) -> str:
    """`loss 0.412 acc 0.871`: each name once, from `<stage>/<name>` or its epoch mean `…/<name>_epoch`."""
    parts = []
    for name in dict.fromkeys(names):
        value = metrics.get(f"{stage}/{name}", metrics.get(f"{stage}/{name}_epoch"))
        if value is not None and math.isfinite(value):
            parts.append(f"{name} {value:.3f}" if abs(value) < 10 else f"{name} {value:.4g}")
    return " ".join(parts)
