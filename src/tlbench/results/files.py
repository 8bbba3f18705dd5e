"""What a run leaves behind: `results.json` (written last, atomically: its presence means the run
finished) and the cost measurements that go in it."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tlbench.run.folder import RESULTS_FILE
from tlbench.run.runtime import release_freed_memory

VERSIONED = ("tlbench", "torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core")


class RunCost(L.Callback):
    """Train images per second and peak memory of a fit.

    Train time is the fit's wall time less validation: loading batches and anything the data side does to
    make them (decoding, embedding features for cached freeze training) counts, validating does not.
    """

    def __init__(self) -> None:
        self.train_images = 0
        self.train_seconds = 0.0
        self.since: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_cpu_peak()
        self.since = time.perf_counter()

    def pause(self) -> None:
        if self.since is not None:
            self.train_seconds += time.perf_counter() - self.since
            self.since = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.pause()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.since = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_images += len(batch[1])

    def on_train_end(self, trainer, pl_module) -> None:
        self.pause()

    @property
    def images_per_second(self) -> float | None:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else None


PROC_STATUS = Path("/proc/self/status")


def reset_cpu_peak() -> None:
    """Start the process's peak-RSS count afresh: runs of a sweep share one process, and each run should
    report its own peak, not the largest of all the runs before it (Linux; elsewhere a no-op). Memory the
    allocator kept for reuse (runtime.py) goes back to the kernel first, or it would count again."""
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory() -> dict[str, Any]:
    """GPU: the most memory tensors held; CPU: the peak resident set since `reset_cpu_peak`."""
    if torch.cuda.is_available():
        return {
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_memory_kind": "cuda_allocated",
        }
    try:
        line = next(x for x in PROC_STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
        return {"peak_memory_mb": int(line.split()[1]) / 2**10, "peak_memory_kind": "cpu_peak_rss"}
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
        return {"peak_memory_mb": kib * scale, "peak_memory_kind": "cpu_max_rss"}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write to a temporary file and rename: a reader never sees half a file, a crash never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def read_results(run_dir: str | Path) -> dict | None:
    """The run's results if it finished, else None (missing, unreadable or incomplete file)."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("status") == "complete" else None
