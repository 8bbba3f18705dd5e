"""run/cost.py: what a fit costs, measured on the device the trainer trains on."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tlbench.run import cost
from tlbench.run.cost import RunCost, peak_memory, reset_cpu_peak
from tlbench.run.runtime import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-run CPU peak needs /proc")
def test_cpu_peak_memory_restarts_for_each_run():
    """Runs of a sweep share one process: the second must not report the first one's peak, also when the
    allocator keeps freed memory for reuse (as tlbench.run.train sets it to)."""
    keep_freed_memory()
    block = np.ones(400 * 2**20, dtype=np.uint8)
    with_block = peak_memory()["peak_memory_mb"]
    del block
    reset_cpu_peak()
    after_reset = peak_memory()
    assert after_reset["peak_memory_kind"] == "cpu_peak_rss"
    assert after_reset["peak_memory_mb"] < with_block - 300


def gpu_trainer(fn: str = "fit") -> SimpleNamespace:
    return SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), state=SimpleNamespace(fn=fn)
    )


def test_train_time_on_a_gpu_is_read_after_the_queued_kernels_finish(monkeypatch):
    """A CUDA step returns before its kernels run: each clock read must wait for them, or images/s counts
    launches. Every read of the clock comes right after a synchronize of the trainer's device."""
    events: list[str] = []
    clock = iter(range(100))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"sync {device}"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: events.append("reset"))
    monkeypatch.setattr(cost.time, "perf_counter", lambda: events.append("clock") or float(next(clock)))
    trainer, batch = gpu_trainer(), (None, torch.zeros(8))
    run = RunCost()
    run.on_fit_start(trainer, None)
    run.on_train_batch_end(trainer, None, None, batch, 0)
    run.on_validation_start(trainer, None)
    run.on_validation_end(trainer, None)
    run.on_train_batch_end(trainer, None, None, batch, 1)
    run.on_train_end(trainer, None)

    clocks = [i for i, e in enumerate(events) if e == "clock"]
    assert len(clocks) == 4
    assert all(events[i - 1] == "sync cuda:0" for i in clocks)
    assert events[0] == "reset", "GPU peak memory restarts with the fit"
    assert run.train_seconds == 2.0 and run.images_per_second == 8.0  # (1 - 0) + (3 - 2) seconds


def test_peak_memory_and_device_follow_the_trainers_device(monkeypatch):
    """trainer=cpu on a GPU host reports the CPU; a GPU trainer reports its GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    assert peak_memory(torch.device("cpu"))["peak_memory_kind"].startswith("cpu")
    assert cost.device_name(torch.device("cpu")).startswith("cpu (")
    gpu = peak_memory(torch.device("cuda", 0))
    assert gpu == {"peak_memory_mb": 3.0, "peak_memory_kind": "cuda_allocated"}
    assert cost.device_name(torch.device("cuda", 0)) == "NVIDIA A100"
