"""What a run prints besides its progress (progress.py): the tlbench log where no one configured logging (the
Python API), and the third-party lines that tlbench's own design triggers and that read like a failure."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

# Hydra's default job log format, so a run from Python prints what `python -m tlbench.train` prints.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
LOG_FILE = "train.log"  # what Hydra names the job log of tlbench.train

# Warnings a run raises by design, each matched by its message (never a whole category or module).
EXPECTED_WARNINGS = (
    # Frozen BatchNorm layers are in eval mode on purpose (strategy.bn=eval); Lightning warns each fit.
    r"Found \d+ module\(s\) in eval mode",
    # CheckpointOnInterrupt is an OnExceptionCheckpoint, with which Lightning reads fit(ckpt_path=None) as
    # "last" and says so, then that no last checkpoint exists on a fresh run; train.py decides resumes.
    r"`\.fit\(ckpt_path=None\)` was called without a model",
    r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint available',
    # Lightning 2.6 calls a torch pytree API deprecated in torch 2.9+: nothing a user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Epoch means are always logged (and EpochLog prints them); per-step points only add to TensorBoard's
    # curve, so an epoch shorter than trainer.log_every_n_steps loses nothing.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
# Lightning's info lines that advertise a cloud product on every Trainer.
EXPECTED_INFO = re.compile(r"💡 Tip: ")
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class DropMessages(logging.Filter):
    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


@contextlib.contextmanager
def quiet_expected_noise() -> Iterator[None]:
    """For the body (a fit and its test), drop EXPECTED_WARNINGS and EXPECTED_INFO; everything else passes."""
    drop = DropMessages(EXPECTED_INFO)
    loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
    with warnings.catch_warnings():
        for message in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        for logger in loggers:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)


class CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at each line (a notebook cell's, pytest's capture), like print()."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: ANN201 - logging.StreamHandler's attribute
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextlib.contextmanager
def api_logging(run_dir: Path, name: str = "tlbench") -> Iterator[None]:
    """`tlbench.train.run(...)` from Python: the INFO lines and epoch lines the CLI prints, on stdout and in
    <run_dir>/train.log, where no logging is configured (no handler on the `tlbench` logger or the root).
    Where the caller configured logging (Hydra, logging.basicConfig), its handlers and levels are kept, so
    no line is printed twice; the root logger is never touched."""
    logger = logging.getLogger(name)
    if logger.hasHandlers():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers = [CurrentStdout(), logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")]
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    level = logger.level
    if level == logging.NOTSET and logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
