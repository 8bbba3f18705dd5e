"""What a run leaves behind and how it is written and read: `results.json` (written last, atomically:
its presence with status "complete" means the run finished), the other files a run folder may hold, and
the cost measurements that go in the results."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch

from tlbench.run.runtime import release_freed_memory

RESULTS_FILE = "results.json"
CLAIM_FILE = "claim.lock"  # held (flock) by the process running the folder
ERROR_FILE = "error.txt"
INTERRUPTED_FILE = "interrupted.txt"
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


def write_atomic(path: str | Path, content: str | bytes | Callable[[IO[bytes]], object]) -> Path:
    """Write `content` (text, bytes, or a function that writes into a binary file) to a temporary file
    beside `path`, flush it to disk and rename it over `path`: a reader sees the old file or the new one,
    never half of one, and a write that fails (a full disk, an error) keeps the old file and removes its
    temporary one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())  # else a power cut after the rename can leave an empty file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_results_or_reason(run_dir: str | Path) -> tuple[dict | None, str]:
    """The run's results if it finished, else None and why not (no file, unreadable, not complete)."""
    try:
        results = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    except FileNotFoundError:
        return None, f"no {RESULTS_FILE}"
    except (OSError, ValueError) as error:
        return None, f"{RESULTS_FILE} is unreadable ({error})"
    if not isinstance(results, dict) or results.get("status") != "complete":
        status = results.get("status") if isinstance(results, dict) else type(results).__name__
        return None, f"{RESULTS_FILE} has status {status!r}, not 'complete'"
    return results, ""


def read_results(run_dir: str | Path) -> dict | None:
    """The run's results if it finished, else None."""
    return read_results_or_reason(run_dir)[0]


def claim_holder(run_dir: str | Path) -> str | None:
    """Who is running this folder now ("pid 123 on host since ..."), or None when nobody is."""
    import fcntl  # POSIX only

    path = Path(run_dir) / CLAIM_FILE
    try:
        handle = path.open("r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
