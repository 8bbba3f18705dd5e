from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import data_config, make_image_folder, shared_data, write_images
from tlbench.data import datamodule as datamodule_module
from tlbench.data.datamodule import ImageDataModule, eval_transform, train_transform
from tlbench.data.images import read_image
from tlbench.data.sources import (
    DEBIAN_FASHION_MNIST,
    DataError,
    LabelledItems,
    per_class_subset,
    stratified_split,
)
from tlbench.models.backbones import Preset

RGB = Preset(
    mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize_size=36, crop_size=32, interpolation="bilinear"
)
GRAY = Preset(mean=(0.42,), std=(0.24,), resize_size=36, crop_size=32, interpolation="bilinear")


def datamodule(root, preset=RGB, seed=0, run_dir=None, **kwargs) -> ImageDataModule:
    kwargs.setdefault("num_workers", 0)
    return ImageDataModule(data_config(root, in_chans=len(preset.mean), **kwargs), preset, seed, run_dir)


def test_split_folders_give_classes_and_sizes(image_folder):
    dm = datamodule(image_folder)
    assert dm.classes == ["cat", "dog"]
    assert dm.split_sizes() == {"train": 24, "val": 8, "test": 8}
    assert dm.data.test_split == "val"


def test_single_folder_is_split_stratified_and_seeded(tmp_path):
    root = make_image_folder(tmp_path / "flat", classes=("a", "b", "c"))
    first = datamodule(root, val_fraction=0.3, seed=1)
    again = datamodule(root, val_fraction=0.3, seed=1)
    other = datamodule(root, val_fraction=0.3, seed=2)
    train, val = first.setup() or first.data.splits["train"], first.data.splits["val"]
    assert set(train.items).isdisjoint(val.items)
    assert np.bincount(val.targets).tolist() == [3, 3, 3]
    again.setup(), other.setup()
    assert again.data.splits["val"].items == val.items
    assert other.data.splits["val"].items != val.items


def test_stratified_split_keeps_a_single_image_class_in_train():
    split = LabelledItems(list("abcdefg"), [0, 0, 0, 0, 0, 0, 1])
    train, val = stratified_split(split, 0.5, seed=0)
    assert 1 in train.targets and 1 not in val.targets


def test_per_class_subset_is_exact_seeded_and_saved(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_split={"train": 9, "val": 2})
    # class b gets only 3 images: a subset of 5 per class takes all 3 of them
    for extra in sorted((root / "train" / "b").iterdir())[3:]:
        extra.unlink()
    dm = datamodule(root, per_class=5, seed=3, run_dir=str(tmp_path / "run"))
    dm.setup()
    assert np.bincount(dm.data.splits["train"].targets).tolist() == [5, 3]
    saved = json.loads((tmp_path / "run" / "subset.json").read_text())
    assert saved["items"] == dm.data.splits["train"].items and saved["per_class"] == 5
    again = datamodule(root, per_class=5, seed=3)
    again.setup()
    assert again.data.splits["train"].items == dm.data.splits["train"].items


def test_val_per_class_auto_scales_validation_with_the_training_subset(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_split={"train": 9, "val": 8})
    monkeypatch.setattr(datamodule_module, "VAL_AUTO_MIN_IMAGES", 6)  # 3 per class with two classes
    sizes = {
        (per_class, val): datamodule(root, per_class=per_class, val_per_class=val).split_sizes()["val"]
        for per_class, val in [(2, "auto"), (5, "auto"), (None, "auto"), (2, None), (2, 7)]
    }
    # auto: as many per class as train, at least the floor; without data.per_class all; null all; a number.
    assert sizes == {(2, "auto"): 6, (5, "auto"): 10, (None, "auto"): 16, (2, None): 16, (2, 7): 14}
    dm = datamodule(root, per_class=2)
    dm.setup()
    assert dm.eval_subsets == {"val_per_class": 3, "test_per_class": None, "test_subset_seed": 0}


def test_results_say_which_evaluation_subsets_a_run_used(finished_run):
    saved = json.loads((finished_run.run_dir / "results.json").read_text())
    # auto without data.per_class: the whole validation split; no test subset unless asked
    assert saved["eval_subsets"] == {"val_per_class": None, "test_per_class": None, "test_subset_seed": 0}


def test_test_per_class_is_the_same_subset_for_every_seed_and_training_size(tmp_path):
    splits = {"train": 9, "val": 3, "test": 8}
    root = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_split=splits)
    tested = []
    for seed, per_class in [(0, 2), (1, 2), (2, 5), (3, None)]:
        dm = datamodule(root, seed=seed, per_class=per_class, test_per_class=3)
        dm.setup()
        tested.append(dm.data.splits["test"].items)
        assert dm.eval_subsets["test_per_class"] == 3
    assert len(tested[0]) == 6 and np.bincount(dm.data.splits["test"].targets).tolist() == [3, 3]
    assert all(items == tested[0] for items in tested)
    whole = datamodule(root, seed=1)
    assert whole.split_sizes()["test"] == 16 and whole.eval_subsets["test_per_class"] is None


def test_per_class_subset_differs_with_seed():
    split = LabelledItems(list(range(100)), [i % 2 for i in range(100)])
    assert per_class_subset(split, 10, seed=0) != per_class_subset(split, 10, seed=1)


@pytest.mark.parametrize(("preset", "channels"), [(RGB, 3), (GRAY, 1)])
def test_transforms_give_crop_size_and_channels(image_folder, preset, channels):
    image = read_image(next((image_folder / "train" / "cat").iterdir()), in_chans=channels)
    for transform in (eval_transform(preset), train_transform(preset, (0.5, 1.0), hflip=True)):
        tensor = transform(image)
        assert tensor.shape == (channels, 32, 32) and tensor.dtype == torch.float32


def test_eval_transform_normalises_with_the_preset_statistics():
    mean_colour = Image.new("RGB", (50, 40), tuple(int(round(m * 255)) for m in RGB.mean))
    tensor = eval_transform(RGB)(mean_colour)
    assert tensor.abs().max() < 0.02


def test_image_size_overrides_the_preset_keeping_its_ratio(image_folder):
    dm = datamodule(image_folder, image_size=64)
    assert (dm.preset.crop_size, dm.preset.resize_size) == (64, 72)
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (3, 64, 64)


def odd_images(folder: Path) -> dict[str, Image.Image]:
    folder.mkdir(parents=True, exist_ok=True)
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    images = {
        "rgba.png": rgba,
        "palette.gif": Image.new("RGB", (20, 20), (0, 255, 0)).convert("P"),
        "la.png": Image.new("LA", (20, 20), (128, 255)),
        "cmyk.jpg": Image.new("CMYK", (20, 20), (0, 255, 255, 0)),
        "gray16.png": Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)),
        "gray.png": Image.new("L", (20, 20), 200),
    }
    for name, image in images.items():
        image.save(folder / name)
    return images


@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_image_mode_reads_as_the_networks_channels(tmp_path, in_chans):
    odd_images(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        image = read_image(path, in_chans=in_chans)
        assert image.mode == ("L" if in_chans == 1 else "RGB"), path.name
        assert eval_transform(GRAY if in_chans == 1 else RGB)(image).shape[0] == in_chans


def test_transparent_pixels_become_white_and_16_bit_is_scaled_not_clipped(tmp_path):
    odd_images(tmp_path)
    assert read_image(tmp_path / "rgba.png").getpixel((0, 0)) == (255, 255, 255)
    assert read_image(tmp_path / "gray16.png", in_chans=1).getpixel((0, 0)) == round(40000 / 65535 * 255)


def plant_bad_images(root: Path) -> list[Path]:
    folder = root / "train" / "cat"
    zero = folder / "zero.jpg"
    zero.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("this is not an image")
    good = next(folder.glob("img_*.jpg")).read_bytes()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    return [zero, text, truncated]


def test_unreadable_images_are_skipped_and_listed(image_folder):
    bad = plant_bad_images(image_folder)
    dm = datamodule(image_folder)
    with pytest.warns(UserWarning, match="skipping 3 unreadable"):
        dm.setup()
    assert sorted(dm.bad_images) == sorted(map(str, bad))
    assert dm.split_sizes()["train"] == 24
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape[1] == 3


def test_unreadable_images_stop_the_run_when_asked(image_folder):
    bad = plant_bad_images(image_folder)
    with pytest.raises(DataError, match="3 unreadable") as caught:
        datamodule(image_folder, on_bad_image="error").setup()
    assert all(str(path) in str(caught.value) for path in bad)


def test_empty_class_folder_is_named(image_folder):
    (image_folder / "train" / "bird").mkdir()
    (image_folder / "val" / "bird").mkdir()
    write_images(image_folder / "val" / "bird", (1, 2, 3), 2)
    with pytest.raises(DataError, match=r"train/bird has no images"):
        datamodule(image_folder).setup()


def test_train_and_val_class_lists_must_match(image_folder):
    shutil.rmtree(image_folder / "val" / "dog")
    write_images(image_folder / "val" / "wolf", (1, 2, 3), 2)
    with pytest.raises(DataError, match=r"only in train: \['dog'\]; only in val: \['wolf'\]"):
        datamodule(image_folder).setup()


def test_a_folder_that_is_gone_says_which_key(tmp_path):
    """Checked before the run too (checks.py); a folder removed since is named when it is read."""
    with pytest.raises(DataError, match="does not exist; check data.root"):
        datamodule(tmp_path / "gone").setup()


def test_folder_without_class_subfolders_says_the_layout(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        datamodule(tmp_path).setup()


def test_cifar10_offline_without_files_says_where_to_put_them(tmp_path):
    dm = ImageDataModule(data_config(tmp_path, source="cifar10", download=False, num_workers=0), RGB, seed=0)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz") as caught:
        dm.setup()
    assert "data=imagefolder" in str(caught.value)


def test_fashion_mnist_from_the_debian_package(tmp_path):
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    subset = {"per_class": 20, "val_per_class": None}
    dm = datamodule(tmp_path, GRAY, source="fashion_mnist", download=False, val_fraction=0.1, **subset)
    assert dm.num_classes == 10 and dm.classes[0] == "T-shirt/top"
    assert dm.split_sizes() == {"train": 200, "val": 6000, "test": 10000}
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (1, 32, 32) and labels.max() < 10


def test_hymenoptera_loads_with_its_palette_gif():
    root = shared_data("hymenoptera")
    dm = datamodule(root, num_workers=0, pipeline="streaming")
    assert dm.classes == ["ants", "bees"]
    sizes = dm.split_sizes()
    assert sizes["train"] + len(dm.bad_images) == 245 and sizes["val"] == 153
    gif = next(i for i, p in enumerate(dm.data.splits["train"].items) if p.endswith(".gif"))
    assert dm.pipeline.datasets["train"][gif][0].shape == (3, 32, 32)


@pytest.mark.slow  # kept out of make test's time budget (make test-slow, CI)
def test_prepare_data_after_setup_does_not_load_the_dataset_again(tmp_path, monkeypatch):
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    import tlbench.data.datamodule

    calls = []
    real = tlbench.data.datamodule.load_source
    monkeypatch.setattr(
        tlbench.data.datamodule, "load_source", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    dm = datamodule(tmp_path, GRAY, source="fashion_mnist", download=False)
    dm.setup()
    dm.prepare_data()  # what trainer.fit calls next
    assert len(calls) == 1
