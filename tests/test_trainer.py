"""run/trainer.py: trainer.precision=auto follows the device Lightning trains on, not the machine."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.fabric.accelerators.cuda as lightning_cuda
import pytest
import torch

from conftest import small
from tlbench.run.cost import RunCost
from tlbench.run.train import compose_config
from tlbench.run.trainer import build_trainer, resolve_precision


@pytest.fixture
def cuda_host(monkeypatch):
    """A machine with one CUDA GPU of compute capability `major`.x, as torch and Lightning see it. torch
    emulates bf16 on every GPU (`is_bf16_supported()` is True on a Volta too); only Ampere (8.x) and newer
    have it in hardware."""

    def make(major: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(lightning_cuda, "num_cuda_devices", lambda: 1)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        properties = SimpleNamespace(major=major, minor=0, name=f"sm_{major}0")
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)

    return make


def trainer_for(overrides: list[str], tmp_path):
    cfg = compose_config([*small(tmp_path), "logger=none", *overrides])
    trainer, _ = build_trainer(cfg, tmp_path / "run", RunCost())
    return trainer


def test_trainer_cpu_on_a_gpu_host_trains_in_fp32_on_the_cpu(cuda_host, tmp_path):
    cuda_host(major=9)
    assert torch.cuda.is_bf16_supported()  # what the machine says; the trainer is what counts
    trainer = trainer_for(["trainer=cpu"], tmp_path)
    assert trainer.strategy.root_device.type == "cpu"
    assert trainer.precision == "32-true"


def test_an_ampere_gpu_trainer_gets_bf16_mixed(cuda_host, tmp_path):
    cuda_host(major=8)
    trainer = trainer_for([], tmp_path)  # trainer.accelerator=auto: Lightning picks the GPU
    assert trainer.strategy.root_device.type == "cuda"
    assert trainer.precision == "bf16-mixed"


def test_a_gpu_with_only_emulated_bf16_trains_in_fp32(cuda_host, tmp_path):
    """Volta / Turing: bf16 would be emulated (slower than fp32), and 16-mixed needs loss scaling, which
    changes the run: auto keeps fp32; 16-mixed is there by name."""
    cuda_host(major=7)
    assert torch.cuda.is_bf16_supported()  # counting emulation, as `precision=auto` used to
    assert trainer_for([], tmp_path).precision == "32-true"
    assert trainer_for(["trainer.precision=16-mixed"], tmp_path).precision == "16-mixed"


def test_a_precision_asked_for_by_name_is_kept():
    assert resolve_precision("bf16-mixed", torch.device("cpu")) == "bf16-mixed"
    assert resolve_precision(32, torch.device("cpu")) == "32"
    assert resolve_precision("auto", torch.device("cpu")) == "32-true"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_real_gpu_auto_precision_follows_the_trainer(tmp_path):
    bf16 = torch.cuda.get_device_capability()[0] >= 8
    assert trainer_for([], tmp_path).precision == ("bf16-mixed" if bf16 else "32-true")
    assert trainer_for(["trainer=cpu"], tmp_path).precision == "32-true"
