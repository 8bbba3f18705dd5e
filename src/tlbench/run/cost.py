"""What a fit costs: train images per second, peak memory and the device, measured on the device the
trainer trains on (not whatever the machine has: `trainer=cpu` on a GPU host reports the CPU)."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tlbench.run.runtime import release_freed_memory

PROC_STATUS = Path("/proc/self/status")


class RunCost(L.Callback):
    """Train images per second (wall time less validation) and peak memory of a fit."""

    def __init__(self) -> None:
        self.train_images = 0
        self.train_seconds = 0.0
        self.since: float | None = None

    def clock(self, trainer: L.Trainer) -> float:
        """The time once the device's queued work is done (else a clock read times the CUDA launches)."""
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        else:
            reset_cpu_peak()
        self.since = self.clock(trainer)

    def pause(self, trainer: L.Trainer) -> None:
        if self.since is not None:
            self.train_seconds += self.clock(trainer) - self.since
            self.since = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.pause(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.since = self.clock(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_images += len(batch[1])

    def on_train_end(self, trainer, pl_module) -> None:
        self.pause(trainer)

    @property
    def images_per_second(self) -> float | None:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else None


def reset_cpu_peak() -> None:
    """Start the process's peak-RSS count afresh (Linux), since the runs of a sweep share one process; memory
    the allocator kept (runtime.py) goes back to the kernel first, or it would count again."""
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory(device: torch.device | None = None) -> dict[str, Any]:
    """GPU: the most memory tensors held; CPU: the peak resident set since `reset_cpu_peak`."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        return {
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_memory_kind": "cuda_allocated",
        }
    try:
        line = next(x for x in PROC_STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
        return {"peak_memory_mb": int(line.split()[1]) / 2**10, "peak_memory_kind": "cpu_peak_rss"}
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
        return {"peak_memory_mb": kib * scale, "peak_memory_kind": "cpu_max_rss"}


def device_name(device: torch.device | None = None) -> str:
    device = device or torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
