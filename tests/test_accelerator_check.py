"""trainer.accelerator naming a device the machine lacks (gpu, cuda, mps, tpu) or trainer.devices asking for
more than it has: one line naming the key and what to use, before any image is read — not Lightning's
33-line MisconfigurationException after the data are loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_image_folder, small
from tlbench.run import checks
from tlbench.run.checks import ConfigError, check_config
from tlbench.run.train import compose_config

MISSING = ["gpu", "cuda", "mps", "tpu"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", per_split={"train": 3, "val": 1})


@pytest.fixture
def no_devices(monkeypatch):
    """This machine as CI sees it, whatever it really has."""
    monkeypatch.setattr(checks, "available_devices", lambda accelerator: 0, raising=False)


@pytest.mark.parametrize("accelerator", MISSING)
def test_an_accelerator_the_machine_lacks_is_one_line(accelerator, folder, no_devices):
    with pytest.raises(ConfigError) as raised:
        check_config(compose_config([*small(folder), f"trainer.accelerator={accelerator}"]))
    message = str(raised.value)
    assert f"trainer.accelerator={accelerator}" in message and "\n" not in message
    assert "trainer.accelerator=auto" in message and "trainer.accelerator=cpu" in message


@pytest.mark.parametrize("accelerator", ["auto", "cpu"])
def test_auto_and_cpu_need_no_device(accelerator, folder, no_devices):
    check_config(compose_config([*small(folder), f"trainer.accelerator={accelerator}"]))


@pytest.mark.parametrize(
    ("devices", "ok"), [("1", True), ("auto", True), ("2", False), ("[0]", True), ("[3]", False)]
)
def test_more_devices_than_the_machine_has_is_one_line(devices, ok, folder, monkeypatch):
    monkeypatch.setattr(checks, "available_devices", lambda accelerator: 1, raising=False)
    cfg = compose_config([*small(folder), "trainer.accelerator=gpu", f"trainer.devices={devices}"])
    if ok:
        check_config(cfg)
        return
    with pytest.raises(ConfigError, match=r"trainer\.devices=.*at most 1") as raised:
        check_config(cfg)
    assert "\n" not in str(raised.value)


def test_asking_lightning_starts_no_cuda():
    """The check runs before a sweep pins each job to its GPU: it must not create a CUDA context."""
    for accelerator in MISSING:
        assert checks.available_devices(accelerator) >= 0
    assert not torch.cuda.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_cli_stops_before_reading_any_image(folder, tmp_path, cli, monkeypatch):
    from tlbench.data.datamodule import ImageDataModule

    def setup(self, stage=None):
        raise AssertionError("the data were loaded before the accelerator was checked")

    monkeypatch.setattr(ImageDataModule, "setup", setup)
    done = cli(*small(folder), "logger=none", "trainer.accelerator=gpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trainer.accelerator=gpu" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
