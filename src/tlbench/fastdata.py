"""Datasets that fit in memory: decode each image once into a uint8 tensor, augment batches on the device.

The streaming path (a DataLoader that opens, decodes and transforms each image on the CPU every epoch) is
bound by the CPU: two workers feed a ResNet-18 about 800 images/s, while an H100 can train on 10,000+.
Here each image is decoded once, kept as uint8 (optionally saved to disk), and the train augmentations
(RandomResizedCrop, horizontal flip, normalise) run on a whole batch on the device, with no Python loop
over samples. Eval images are resized and centre-cropped once, when they are decoded.

Nothing here imports Lightning or Hydra: the same functions serve the benchmark and the DataModule.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tlbench.images import read_image

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_CACHE_FORMAT = 1


def resize_center_crop(im: Image.Image, resize_size: int, crop_size: int, interpolation: str) -> Image.Image:
    """torchvision's Resize(resize_size) then CenterCrop(crop_size), on a PIL image."""
    w, h = im.size
    if w <= h:
        new_w, new_h = resize_size, int(resize_size * h / w)
    else:
        new_w, new_h = int(resize_size * w / h), resize_size
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), _PIL_INTERPOLATION[interpolation])
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    return im.crop((left, top, left + crop_size, top + crop_size))


def image_sizes(paths: Sequence[str | Path]) -> set[tuple[int, int]]:
    """The distinct (width, height) of the images in a file list, read from headers (no pixels decoded)."""
    sizes = set()
    for path in paths:
        with Image.open(path) as im:
            sizes.add(im.size)
    return sizes


def resize_center_crop_uint8(
    images: torch.Tensor, resize_size: int, crop_size: int, interpolation: str = "bilinear", chunk: int = 1024
) -> torch.Tensor:
    """Resize(resize_size) + CenterCrop(crop_size) of a uint8 batch of equal-sized images, on its device.

    For datasets whose images all share one size (CIFAR, MNIST): decode them once at native size, which is
    cheap, and make the eval-sized copy here instead of with PIL on the CPU (10 s for CIFAR-10's test set on
    a 16-core host). torchvision's tensor Resize (antialias on): bilinear matches PIL to ±1 grey level;
    bicubic uses a = -0.75 where PIL uses -0.5, which moves a few edge pixels by more.
    """
    _, _, height, width = images.shape
    if width <= height:
        new_w, new_h = resize_size, int(resize_size * height / width)
    else:
        new_w, new_h = int(resize_size * width / height), resize_size
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    out = torch.empty(
        (len(images), images.shape[1], crop_size, crop_size), dtype=torch.uint8, device=images.device
    )
    for i in range(0, len(images), chunk):
        resized = F.interpolate(
            images[i : i + chunk].float(), size=(new_h, new_w), mode=interpolation, antialias=True
        )
        crop = resized[:, :, top : top + crop_size, left : left + crop_size]
        out[i : i + chunk] = crop.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _file_fingerprint(paths: Sequence[str | Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_file(cache_dir: Path, paths: Sequence[str | Path], tag: str) -> Path:
    digest = hashlib.sha256(tag.encode())
    for path in paths:
        digest.update(os.fsencode(os.path.abspath(path)) + b"\n")
    return cache_dir / f"uint8-{digest.hexdigest()[:24]}.pt"


def decode_to_uint8(
    paths: Sequence,
    size: int,
    in_chans: int = 3,
    crop_size: int | None = None,
    interpolation: str = "bilinear",
    cache_dir: str | Path | None = None,
    num_threads: int | None = None,
    read: Callable[[object], Image.Image] | None = None,
) -> torch.Tensor:
    """Decode each image once into a (N, in_chans, crop, crop) uint8 tensor, in the order of `paths`.

    Each image is resized so its shorter side is `size`, then centre-cropped to `crop_size` (default `size`):
    train images are stored whole-ish at `size` so a RandomResizedCrop still has pixels to choose from, eval
    images as the final Resize(size)+CenterCrop(crop_size) the model sees. `read` turns an item into a PIL
    image in the right mode (default: `tlbench.images.read_image` on a file path). With `cache_dir` (file
    paths only), the tensor is saved there, keyed by the file list and these settings, and decoded again
    when any file's size or modification time changes.
    """
    read = read or (lambda path: read_image(path, in_chans))
    crop_size = size if crop_size is None else crop_size
    tag = f"v{_CACHE_FORMAT}|{size}|{crop_size}|{in_chans}|{interpolation}"
    cache_path = fingerprint = None
    if cache_dir is not None:
        cache_path = _cache_file(Path(cache_dir), paths, tag)
        fingerprint = _file_fingerprint(paths)
        if cache_path.exists():
            cached = torch.load(cache_path, map_location="cpu", weights_only=True)
            if cached["fingerprint"] == fingerprint:
                return cached["images"]

    def decode_one(path: str | Path) -> np.ndarray:
        im = resize_center_crop(read(path), size, crop_size, interpolation)
        return np.array(im).reshape(crop_size, crop_size, in_chans)

    images = torch.empty((len(paths), crop_size, crop_size, in_chans), dtype=torch.uint8)
    # PIL releases the GIL while decoding and resizing, so threads scale without pickling pixels around.
    with ThreadPoolExecutor(max_workers=num_threads or min(32, os.cpu_count() or 1)) as pool:
        for i, pixels in enumerate(pool.map(decode_one, paths, chunksize=64)):
            images[i] = torch.from_numpy(pixels)
    images = images.permute(0, 3, 1, 2).contiguous()

    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"images": images, "fingerprint": fingerprint, "tag": tag}, tmp)
        os.replace(tmp, cache_path)
    return images


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop.get_params for n images at once: (n, 4) float boxes (top, left, h, w) in pixels.

    Same algorithm as torchvision: up to `attempts` draws of area and log-aspect per image, the first that
    fits is kept, otherwise a centre crop with the aspect clamped to `ratio`. Boxes are whole pixels.
    """
    area = height * width
    u = torch.rand((n, attempts, 4), generator=generator, device=device, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    top = torch.floor(u[..., 2].gather(1, first).squeeze(1) * (height - h + 1))
    left = torch.floor(u[..., 3].gather(1, first).squeeze(1) * (width - w + 1))

    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(height * max(ratio))), height
    else:
        fb_w, fb_h = width, height
    # Python scalars, not a tensor: building one on the GPU would be a host-to-device copy every batch.
    ok = fits.any(dim=1)
    fallback = ((height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w)
    boxes = [torch.where(ok, v, float(fb)) for v, fb in zip((top, left, h, w), fallback, strict=True)]
    return torch.stack(boxes, dim=1).float()


def _sample_coords(
    start: torch.Tensor, length: torch.Tensor, size: int, extent: int, clamp: bool
) -> torch.Tensor:
    """(n, size) grid_sample coordinates of `size` samples across [start, start+length) of an `extent` axis.

    Sample k sits at start + (k+0.5)·length/size - 0.5 (half-pixel centres, as torchvision and PIL resize);
    bilinear clamps it to the crop's first and last pixel, as resizing an already cropped image does.
    """
    k = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    src = start[:, None] + k * (length / size)[:, None] - 0.5
    if clamp:
        src = torch.minimum(torch.maximum(src, start[:, None]), (start + length - 1)[:, None])
    return (2 * src + 1) / extent - 1


def resized_crop(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flip: torch.Tensor | None = None,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w) and resize it to size×size, mirrored where `flip` is set.

    One grid_sample for the whole batch, float32 out in the input's value range. Bilinear equals torchvision's
    resized_crop(antialias=False); bicubic differs only in the taps next to the crop's edge, which read the
    pixels beyond it. No antialiasing: with images stored at the preset's resize_size a crop shrinks by at
    most resize/crop (256/224), where it changes little.
    """
    n, chans, height, width = images.shape
    top, left, h, w = boxes.to(images.device, torch.float32).unbind(1)
    clamp = interpolation != "bicubic"
    x = _sample_coords(left, w, size, width, clamp)
    if flip is not None:
        x = torch.where(flip[:, None], x.flip(1), x)
    y = _sample_coords(top, h, size, height, clamp)
    grid = torch.stack([x[:, None, :].expand(n, size, size), y[:, :, None].expand(n, size, size)], dim=-1)
    out = F.grid_sample(images.float(), grid, mode=interpolation, padding_mode="border", align_corners=False)
    if interpolation == "bicubic" and images.dtype == torch.uint8:
        out = out.clamp_(0, 255)
    return out


class Normalize:
    """uint8 or [0,255] float (N, C, H, W) -> (x/255 - mean)/std, optionally channels_last and cast."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.dtype = dtype
        self.channels_last = channels_last
        self._coeffs: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _scale_shift(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._coeffs:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self._coeffs[device] = (1.0 / (255.0 * std), -mean / std)
        return self._coeffs[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self._scale_shift(x.device)
        out = torch.addcmul(shift, x.float(), scale)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out.to(self.dtype)


class EvalPreprocess(Normalize):
    """Eval images are cropped when decoded (decode_to_uint8 with crop_size), so only normalising is left."""


class GpuAugment:
    """RandomResizedCrop + RandomHorizontalFlip + Normalize for a uint8 batch, on the batch's device.

    Every sample gets its own box and flip, drawn from a generator seeded once, so a run is repeatable on
    the same device. Output: float (or `dtype`), normalised, channels_last when asked.
    """

    def __init__(
        self,
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        interpolation: str = "bilinear",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        seed: int = 0,
    ):
        self.crop_size = crop_size
        self.scale = scale
        self.ratio = ratio
        self.hflip = hflip
        self.interpolation = interpolation
        self.normalize = Normalize(mean, std, dtype=dtype, channels_last=channels_last)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        gen = self.generator(images.device)
        boxes = sample_crop_boxes(n, height, width, self.scale, self.ratio, gen, images.device)
        flip = None
        if self.hflip:
            flip = torch.rand(n, generator=gen, device=images.device) < 0.5
        return self.normalize(resized_crop(images, boxes, self.crop_size, flip, self.interpolation))


class InMemoryLoader:
    """Batches of (images[idx], labels[idx]) from tensors, shuffled by a seeded generator.

    The tensors stay wherever they are (move them to the GPU once with `.to(device)`), so indexing a batch
    is a gather on that device and nothing is copied per step. `transform` (e.g. GpuAugment) is applied to
    each image batch. Also serves cached features: any (N, ...) tensor works.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform
        self.seed = seed
        self._generator: torch.Generator | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> InMemoryLoader:
        self.images = self.images.to(device, non_blocking=non_blocking)
        self.labels = self.labels.to(device, non_blocking=non_blocking)
        self._generator = None
        return self

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.labels), self.labels.device
        if self.shuffle:
            if self._generator is None:
                self._generator = torch.Generator(device=device).manual_seed(self.seed)
            order = torch.randperm(n, generator=self._generator, device=device)
        for b in range(len(self)):
            if self.shuffle:
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                x, y = self.images[idx], self.labels[idx]
            else:
                x = self.images[b * self.batch_size : (b + 1) * self.batch_size]
                y = self.labels[b * self.batch_size : (b + 1) * self.batch_size]
            yield (self.transform(x) if self.transform is not None else x), y
