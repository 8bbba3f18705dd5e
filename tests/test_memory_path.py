"""The in-memory path: images decoded once into uint8, augmented a whole batch at a time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms.v2 import functional as TF

from tlbench.data import decode
from tlbench.data.augment import EvalPreprocess, GpuAugment, resized_crop, sample_crop_boxes
from tlbench.data.decode import decode_to_uint8, image_sizes, resize_center_crop_uint8
from tlbench.data.loaders import InMemoryLoader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def smooth_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 images with structure (not noise), so interpolation differences would show."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand((n, 3, 4, 5), generator=g) * 255
    return (
        torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear").round().to(torch.uint8)
    )


def write_jpegs(folder, n: int, size=(40, 32), seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------------------------------ crop boxes
def test_crop_boxes_stay_inside_the_image_and_respect_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(4000, 32, 40, scale=(0.3, 0.9), ratio=(3 / 4, 4 / 3), generator=g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 40).all()
    assert (boxes == boxes.round()).all(), "boxes are whole pixels, as torchvision's"
    area = h * w / (32 * 40)
    # rounding w and h to whole pixels moves the area and the aspect by a little
    assert area.min() >= 0.3 * 0.9 and area.max() <= 0.9 * 1.1
    aspect = w / h
    assert aspect.min() >= 0.75 * 0.9 and aspect.max() <= 4 / 3 * 1.1
    assert area.std() > 0.1, "areas spread over the scale range"


def test_impossible_scale_falls_back_to_a_centre_crop_like_torchvision():
    boxes = sample_crop_boxes(5, 20, 60, scale=(2.0, 3.0), ratio=(3 / 4, 4 / 3))
    # 60/20 = 3 > 4/3: full height, width = round(20 * 4/3) = 27, centred
    assert boxes.tolist() == [[0.0, 16.0, 20.0, 27.0]] * 5


# ------------------------------------------------------------------------------------------ resampling
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resized_crop_equals_torchvision_on_the_same_box(interpolation):
    images = smooth_images(4, 32, 40)
    boxes = torch.tensor(
        [[3.0, 5.0, 20.0, 25.0], [0.0, 0.0, 32.0, 40.0], [10.0, 0.0, 22.0, 13.0], [0.0, 7.0, 9.0, 33.0]]
    )
    out = resized_crop(images, boxes, 48, interpolation=interpolation)
    for image, box, got in zip(images, boxes.int().tolist(), out, strict=True):
        mode = TF.InterpolationMode(interpolation)
        ref = TF.resized_crop(image.float(), *box, [48, 48], interpolation=mode, antialias=False)
        diff = (got - ref.clamp(0, 255)).abs()
        if interpolation == "bilinear":
            assert diff.max() < 1e-3
        else:  # bicubic taps within two source pixels of the crop's edge read the pixels beyond it
            m = int(2 * 48 / min(box[2], box[3])) + 2
            assert diff[:, m:-m, m:-m].max() < 1e-3


def test_flip_mirrors_exactly_the_unflipped_crop():
    images = smooth_images(2, 32, 32)
    boxes = torch.tensor([[2.0, 3.0, 25.0, 20.0], [0.0, 0.0, 32.0, 32.0]])
    plain = resized_crop(images, boxes, 40)
    flipped = resized_crop(images, boxes, 40, flip=torch.tensor([True, False]))
    assert torch.equal(flipped[0], plain[0].flip(-1))
    assert torch.equal(flipped[1], plain[1])


def test_no_op_crop_equals_torchvision_normalize():
    images = smooth_images(3, 24, 24)
    augment = GpuAugment(24, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    expected = TF.normalize(images.float() / 255, list(MEAN), list(STD))
    assert torch.allclose(augment(images), expected, atol=1e-5)


def test_augment_output_shape_dtype_range_and_layout():
    images = smooth_images(6, 32, 32)
    augment = GpuAugment(56, MEAN, STD, dtype=torch.bfloat16, channels_last=True)
    out = augment(images)
    assert out.shape == (6, 3, 56, 56) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = out.float().transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= low - 0.02).all() and (
        per_channel.max(1).values <= high + 0.02
    ).all()


def test_augment_is_repeatable_with_a_seed_and_differs_across_seeds_and_samples():
    images = smooth_images(8, 32, 32).repeat(2, 1, 1, 1)
    augment = GpuAugment(32, MEAN, STD)
    first = augment(images, torch.Generator().manual_seed(3))
    again = augment(images, torch.Generator().manual_seed(3))
    other = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first[:8], first[8:]), "each sample draws its own box and flip"


# ------------------------------------------------------------------------------------------ eval images
def test_eval_cache_equals_torchvisions_eval_transform(tmp_path):
    paths = write_jpegs(tmp_path, 4, size=(40, 30))
    cached = decode_to_uint8(paths, 36, 3, crop_size=32).images
    reference = transforms.Compose(
        [
            transforms.Resize(36),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    expected = torch.stack([reference(Image.open(p).convert("RGB")) for p in paths])
    assert torch.allclose(EvalPreprocess(MEAN, STD)(cached), expected, atol=1e-5)


def test_device_resize_matches_pil_within_one_grey_level(tmp_path):
    paths = write_jpegs(tmp_path, 4, size=(32, 32))
    native = decode_to_uint8(paths, 32).images
    on_device = resize_center_crop_uint8(native, 73, 64)
    with_pil = decode_to_uint8(paths, 73, 3, crop_size=64).images
    assert (on_device.int() - with_pil.int()).abs().max() <= 1


# ------------------------------------------------------------------------------------------ decoding
def test_odd_image_modes_decode_to_the_asked_channels(tmp_path):
    rgba = Image.new("RGBA", (20, 16), (255, 0, 0, 0))
    palette = Image.new("P", (20, 16), 3)
    gray = Image.new("L", (20, 16), 128)
    sixteen = Image.fromarray(np.full((16, 20), 65535, dtype=np.uint16))
    paths = []
    for name, im in [("a.png", rgba), ("p.gif", palette), ("l.png", gray), ("i16.png", sixteen)]:
        im.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    rgb = decode_to_uint8(paths, 16, 3).images
    assert rgb.shape == (4, 3, 16, 16) and rgb.dtype == torch.uint8
    assert rgb[0, :, 0, 0].tolist() == [255, 255, 255], "transparent pixels land on white, not black"
    assert rgb[2].unique().tolist() == [128]
    assert rgb[3].unique().tolist() == [255], (
        "16-bit white stays white (scaled, not clipped to 255 from 65535)"
    )
    gray_out = decode_to_uint8(paths, 16, 1).images
    assert gray_out.shape == (4, 1, 16, 16)
    assert image_sizes(paths) == {(20, 16)}


def test_disk_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    paths = write_jpegs(tmp_path / "img", 3)
    cache = tmp_path / "cache"
    first = decode_to_uint8(paths, 16, cache_dir=cache).images
    assert len(list(cache.glob("*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(decode, "read_image", no_decoding)
    assert torch.equal(decode_to_uint8(paths, 16, cache_dir=cache).images, first)
    monkeypatch.undo()

    Image.new("RGB", (40, 32), (0, 0, 0)).save(paths[1])
    later = time.time() + 5
    os.utime(paths[1], (later, later))
    changed = decode_to_uint8(paths, 16, cache_dir=cache).images
    assert changed[1].max() == 0 and torch.equal(changed[0], first[0])
    assert len(list(cache.glob("*.pt"))) == 1, "the stale entry is replaced, not kept beside"
    assert not torch.equal(decode_to_uint8(paths, 8, cache_dir=cache).images[0], first[0, :, :8, :8])


def test_a_truncated_cache_file_is_rebuilt_not_reported(tmp_path, caplog):
    paths = write_jpegs(tmp_path / "img", 3)
    cache = tmp_path / "cache"
    first = decode_to_uint8(paths, 16, cache_dir=cache).images
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # a crash or a full disk cut it short
    with caplog.at_level("WARNING"):
        again = decode_to_uint8(paths, 16, cache_dir=cache)
    assert torch.equal(again.images, first) and again.bad == {}
    assert "unreadable" in caplog.text and "rebuilding" in caplog.text
    assert torch.equal(decode_to_uint8(paths, 16, cache_dir=cache).images, first), "and rewritten whole"


def test_decoding_is_the_bad_image_check(tmp_path):
    """One pass: a file that cannot be decoded is listed with its reason, the others are decoded."""
    paths = write_jpegs(tmp_path / "img", 3)
    Path(paths[1]).write_bytes(Path(paths[1]).read_bytes()[:200])  # truncated JPEG
    decoded = decode_to_uint8(paths, 16, cache_dir=tmp_path / "cache")
    assert list(decoded.bad) == [paths[1]] and "Error" in decoded.bad[paths[1]]
    assert decoded.images[0].float().mean() > 0 and decoded.images[1].max() == 0
    assert decode_to_uint8(paths, 16, cache_dir=tmp_path / "cache").bad == decoded.bad, "cached too"


# ------------------------------------------------------------------------------------------ the loader
def test_loader_visits_every_image_once_per_epoch_in_a_seeded_order():
    images = torch.arange(10).view(10, 1, 1, 1).to(torch.uint8)
    labels = torch.arange(10)
    loader = InMemoryLoader(images, labels, batch_size=4, seed=1)
    assert len(loader) == 3
    epoch = [y for _, y in loader]
    assert [len(y) for y in epoch] == [4, 4, 2]
    assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    for x, y in loader:
        assert torch.equal(x.flatten().long(), y), "images and labels stay paired"
    again = InMemoryLoader(images, labels, batch_size=4, seed=1)
    assert torch.equal(torch.cat([y for _, y in again]), torch.cat(epoch))


def test_each_epoch_has_its_own_order_whatever_came_before():
    """A resumed run starts at epoch k without replaying epochs 0..k-1, and must see epoch k's order."""
    images, labels = torch.zeros(50, 1, 1, 1), torch.arange(50)
    epoch = {"now": 0}
    uninterrupted = InMemoryLoader(images, labels, 8, seed=2, epoch_of=lambda: epoch["now"])
    orders = []
    for epoch["now"] in range(3):
        orders.append(torch.cat([y for _, y in uninterrupted]))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    resumed = InMemoryLoader(images, labels, 8, seed=2, epoch_of=lambda: 2)
    assert torch.equal(torch.cat([y for _, y in resumed]), orders[2])


def test_loader_applies_the_transform_to_each_batch():
    images = smooth_images(5, 32, 32)
    loader = InMemoryLoader(images, torch.zeros(5, dtype=torch.long), 2, transform=GpuAugment(16, MEAN, STD))
    shapes = [x.shape for x, _ in loader]
    assert shapes == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
