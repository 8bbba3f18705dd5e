"""The pipelines as a user meets them: data.pipeline=memory (decode once, preprocess batches on the device)
against streaming, on the CPU; decoding once per sweep; unreadable images found by either."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import data_config, make_image_folder, small, train_until_killed
from tlbench.data import sources
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.preset import Preset
from tlbench.data.sources import DataError
from tlbench.models.module import TransferModule
from tlbench.run.train import compose_config, train

RGB = Preset(
    mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize_size=36, crop_size=32, interpolation="bilinear"
)
GRAY = Preset(mean=(0.42,), std=(0.24,), resize_size=36, crop_size=32, interpolation="bilinear")


def datamodule(root: Path, preset: Preset, **kwargs) -> ImageDataModule:
    data = data_config(root, in_chans=len(preset.mean), batch_size=4, num_workers=0, **kwargs)
    return ImageDataModule(data, preset, seed=3)


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
def test_memory_pipeline_gives_the_streaming_batches_preprocessed_on_the_device(tmp_path, size, preset):
    root = make_image_folder(tmp_path / "images", per_split={"train": 6, "val": 3}, size=size)
    add_odd_modes(root / "val" / "cat", size)
    streaming = datamodule(root, preset, pipeline="streaming")
    cached = datamodule(root, preset, pipeline="memory")

    for split in ("train", "val", "test"):
        a, b = getattr(streaming, f"{split}_dataloader")(), getattr(cached, f"{split}_dataloader")()
        assert len(a) == len(b)
        assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(torch.cat([y for _, y in b]).tolist())

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


def test_memory_fast_dev_run_end_to_end_with_a_disk_cache(generated, tmp_path):
    overrides = [*small_on_cpu(generated), "data.pipeline=memory", f"data.cache_dir={tmp_path / 'cache'}"]
    results = train(compose_config([*overrides, "trainer.fast_dev_run=true"]), tmp_path / "run")
    assert results["status"] == "complete" and 0.0 <= results["metrics"]["test/acc"] <= 1.0
    assert results["pipeline"] == "memory" and results["feature_cache"] is False
    assert len(list((tmp_path / "cache").glob("uint8-*.pt"))) == 3  # train, val, test


def test_memory_refuses_to_start_above_its_memory_limit(generated):
    dm = datamodule(generated, RGB, pipeline="memory", memory_max_gb=1e-6)
    with pytest.raises(DataError, match="GB of uint8 images") as error:
        dm.setup()
    assert "data.pipeline=streaming" in str(error.value) and "data.memory_max_gb" in str(error.value)
    assert "train 16 × 3×32×32" in str(error.value)


def test_auto_holds_the_images_in_memory_only_when_they_fit(generated):
    assert datamodule(generated, RGB).pipeline is None, "nothing is read before setup"
    fits, too_big = datamodule(generated, RGB), datamodule(generated, RGB, memory_max_gb=1e-6)
    fits.setup(), too_big.setup()
    assert fits.pipeline.name == "memory" and too_big.pipeline.name == "streaming"


@pytest.mark.parametrize("pipeline", ["streaming", "memory"])
def test_a_sweep_reads_the_images_once(generated, tmp_path, monkeypatch, pipeline):
    """The second run over the same files (another seed or strategy of a sweep) finds the decoded splits or
    the bad-image check in the cache and decodes no image (headers give sizes); a changed file is read."""
    cache = str(tmp_path / "cache")
    first = datamodule(generated, RGB, pipeline=pipeline, cache_dir=cache)
    first.setup()

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded again")

    monkeypatch.setattr(sources, "read_image", no_decoding)
    monkeypatch.setattr(sources, "check_image", no_decoding)
    again = datamodule(generated, RGB, pipeline=pipeline, cache_dir=cache)
    again.setup()
    assert again.split_sizes() == first.split_sizes()
    monkeypatch.undo()

    changed = sorted((generated / "train" / "cat").iterdir())[0]
    changed.write_bytes(b"not an image any more")
    third = datamodule(generated, RGB, pipeline=pipeline, cache_dir=cache)
    third.setup()
    assert list(third.bad_images) == [str(changed)]


@pytest.mark.parametrize("pipeline", ["streaming", "memory"])
def test_both_pipelines_leave_out_the_same_unreadable_images(generated, pipeline):
    train_cat = sorted((generated / "train" / "cat").iterdir())
    train_cat[0].write_bytes(train_cat[0].read_bytes()[:300])  # truncated JPEG
    (generated / "val" / "dog" / "empty.png").write_bytes(b"")
    dm = datamodule(generated, RGB, pipeline=pipeline)
    with pytest.warns(UserWarning, match="skipping 2 unreadable image"):
        dm.setup()
    assert sorted(dm.bad_images) == sorted([str(train_cat[0]), str(generated / "val" / "dog" / "empty.png")])
    assert dm.split_sizes() == {"train": 15, "val": 8, "test": 8}
    assert sum(len(y) for _, y in dm.train_dataloader()) == 15


@pytest.mark.parametrize("pipeline", ["streaming", "memory"])
def test_a_class_whose_every_image_is_unreadable_stops_the_run(generated, pipeline):
    for path in (generated / "train" / "dog").iterdir():
        path.write_bytes(b"broken")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no readable image of class.*dog"):
        datamodule(generated, RGB, pipeline=pipeline).setup()


def test_a_memory_pipeline_run_resumes_with_the_batches_it_would_have_seen(generated, tmp_path, monkeypatch):
    """partial (BatchNorm and weights of the top stage train), augmentation on: stopped after epoch 1 and
    run again, it ends where the uninterrupted run ends — epoch 2's order and crops, not epoch 0's again."""
    overrides = [*small_on_cpu(generated), "strategy=partial", "data.pipeline=memory", "trainer.max_epochs=3"]
    whole = train(compose_config(overrides), tmp_path / "whole")

    train_until_killed(overrides, tmp_path / "resumed", epoch=2, monkeypatch=monkeypatch)
    resumed = train(compose_config(overrides), tmp_path / "resumed")

    weights = [
        TransferModule.load_from_checkpoint(tmp_path / run / "checkpoints/last.ckpt", weights_only=True)
        for run in ("whole", "resumed")
    ]
    for (name, a), (_, b) in zip(weights[0].state_dict().items(), weights[1].state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert resumed["metrics"]["test/acc"] == pytest.approx(whole["metrics"]["test/acc"])
