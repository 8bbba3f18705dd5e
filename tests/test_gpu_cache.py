"""The fast path as a user meets it: data.gpu_cache (decode once, preprocess batches on the device) and
strategy.cache_features (freeze without running the frozen network every epoch), on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder, small
from tlbench.backbones import Preset
from tlbench.data import ImageDataModule
from tlbench.module import TransferModule
from tlbench.sources import DataError
from tlbench.strategies import StrategyError
from tlbench.train import build_datamodule, build_module, compose_config, train

RGB = Preset(
    mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize_size=36, crop_size=32, interpolation="bilinear"
)
GRAY = Preset(mean=(0.42,), std=(0.24,), resize_size=36, crop_size=32, interpolation="bilinear")


def datamodule(root: Path, preset: Preset, **kwargs) -> ImageDataModule:
    return ImageDataModule(
        preset, root=str(root), in_chans=len(preset.mean), batch_size=4, num_workers=0, seed=3, **kwargs
    )


def add_odd_modes(folder: Path, size: tuple[int, int]) -> None:
    """A palette GIF and a half-transparent RGBA PNG: read through the source's reader on both paths."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("P").save(folder / "palette.gif")
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(folder / "transparent.png")


class SeenBatches(L.Callback):
    """The batches the module's steps receive, i.e. after transfer and on_after_batch_transfer."""

    def __init__(self) -> None:
        self.train: list = []
        self.val: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.append(batch)


def tiny_module(num_classes: int, in_chans: int) -> TransferModule:
    return TransferModule(
        backbone={"name": "resnet18", "weights": None, "checkpoint": None, "in_chans_mode": "sum"},
        num_classes=num_classes,
        in_chans=in_chans,
    )


# Square images take the device-resize path for eval (CIFAR's); 40×32 ones are resized with PIL when decoded.
@pytest.mark.parametrize("size", [(32, 32), (40, 32)])
@pytest.mark.parametrize("preset", [GRAY, RGB], ids=["1ch", "3ch"])
def test_gpu_cache_gives_the_streaming_batches_preprocessed_on_the_device(tmp_path, size, preset):
    root = make_image_folder(tmp_path / "images", per_split={"train": 6, "val": 3}, size=size)
    add_odd_modes(root / "val" / "cat", size)
    streaming, cached = datamodule(root, preset), datamodule(root, preset, gpu_cache=True)

    for split in ("train", "val", "test"):
        a, b = getattr(streaming, f"{split}_dataloader")(), getattr(cached, f"{split}_dataloader")()
        assert len(a) == len(b)
        assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(torch.cat([y for _, y in b]).tolist())
        images, _ = next(iter(b))
        assert images.dtype == torch.uint8 and images.shape[1] == len(preset.mean)

    seen = SeenBatches()
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[seen],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(tiny_module(2, len(preset.mean)), datamodule=cached)

    assert len(seen.train) == len(streaming.train_dataloader())
    for images, _ in seen.train:
        assert images.dtype == torch.float32 and images.shape[1:] == (len(preset.mean), 32, 32)
        low = (0 - torch.tensor(preset.mean)) / torch.tensor(preset.std)
        high = (1 - torch.tensor(preset.mean)) / torch.tensor(preset.std)
        per_channel = images.transpose(0, 1).flatten(1)
        assert (per_channel.min(1).values >= low - 1e-4).all() and (
            per_channel.max(1).values <= high + 1e-4
        ).all()
    # Eval images are the streaming path's, within one grey level (device resize vs PIL) once normalised.
    one_grey_level = 1.01 / 255 / min(preset.std)
    streamed = list(streaming.val_dataloader())
    assert len(seen.val) == len(streamed)
    for (images, labels), (expected, expected_labels) in zip(seen.val, streamed):
        assert torch.equal(labels, expected_labels)
        assert (images - expected).abs().max() <= one_grey_level


def small_on_cpu(root: Path) -> list[str]:
    return [
        *small(root),
        "trainer=cpu",  # the equivalence below is exact in fp32; a GPU run would embed in bf16
        "logger=none",
        "trainer.enable_progress_bar=false",
    ]


@pytest.fixture
def generated(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4, "test": 4})


def test_gpu_cache_fast_dev_run_end_to_end_with_a_disk_cache(generated, tmp_path):
    overrides = [*small_on_cpu(generated), "data.gpu_cache=true", f"data.cache_dir={tmp_path / 'cache'}"]
    results = train(compose_config([*overrides, "trainer.fast_dev_run=true"]), tmp_path / "run")
    assert results["status"] == "complete" and 0.0 <= results["metrics"]["test/acc"] <= 1.0
    assert results["config"]["data"]["gpu_cache"] is True and results["feature_cache"] is False
    assert len(list((tmp_path / "cache").glob("uint8-*.pt"))) == 3  # train, val, test


def test_gpu_cache_refuses_to_start_above_its_memory_limit(generated):
    dm = datamodule(generated, RGB, gpu_cache=True, gpu_cache_max_gb=1e-6)
    with pytest.raises(DataError, match="GB of uint8 images") as error:
        dm.setup()
    assert "data.gpu_cache=false" in str(error.value) and "data.gpu_cache_max_gb" in str(error.value)
    assert "train 16 × 3×32×32" in str(error.value)


def head_of(module: TransferModule) -> torch.Tensor:
    return torch.cat([module.net.head.weight.detach().flatten(), module.net.head.bias.detach()])


def test_cache_features_trains_the_head_the_end_to_end_freeze_run_trains(generated, tmp_path):
    """Augmentation off, constant learning rate, no weight decay: training the head on cached features is
    then the same computation as `trainer.fit` with the frozen network in the loop (same init, same batch
    order from the in-memory loader), so the two heads agree weight for weight after 2 epochs. Not proven
    here: equality with augmentation on (each epoch is its own random view on either path) or with a
    scheduler (cache_features keeps head_lr constant)."""
    overrides = [
        *small_on_cpu(generated),
        "strategy=freeze",
        "strategy.head_lr=0.01",
        "optim.scheduler=none",
        "optim.weight_decay=0",
        "data.gpu_cache=true",
        "data.train_crop_scale=[1.0,1.0]",
        "data.hflip=false",
        "trainer.max_epochs=2",
    ]
    results = train(compose_config([*overrides, "strategy.cache_features=true"]), tmp_path / "cached")

    assert results["feature_cache"] is True and results["train_images_per_s"] > 0
    assert {"test/acc", "test/f1_macro", "val/acc"} <= set(results["metrics"])
    assert results["best_checkpoint"] == "checkpoints/best.ckpt" and results["best_val"] is not None
    assert json.loads((tmp_path / "cached" / "results.json").read_text())["feature_cache"] is True
    checkpoints = tmp_path / "cached" / "checkpoints"
    best = TransferModule.load_from_checkpoint(
        checkpoints / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert best.strategy["cache_features"] is True and best.net.head.out_features == 2
    last = TransferModule.load_from_checkpoint(
        checkpoints / "last.ckpt", map_location="cpu", weights_only=True
    )

    # The same run end to end, built the way train() builds it (seed, data, module).
    cfg = compose_config(overrides)
    L.seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg, tmp_path / "fit")
    datamodule.setup()
    module = build_module(cfg, datamodule)
    start = head_of(module)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert not torch.allclose(head_of(module), start, atol=1e-3), "the head did train"
    assert torch.allclose(head_of(last), head_of(module), atol=1e-5)


@pytest.mark.parametrize("strategy", [["strategy=partial"], ["strategy=freeze", "strategy.bn=train"]])
def test_cache_features_needs_a_fixed_trunk(generated, tmp_path, strategy):
    cfg = compose_config([*small_on_cpu(generated), *strategy, "strategy.cache_features=true"])
    with pytest.raises(StrategyError, match="needs strategy=freeze with strategy.bn=eval"):
        train(cfg, tmp_path / "run")
