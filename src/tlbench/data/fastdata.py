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
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tlbench.data.images import BadImageError, read_image, shown_size

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# 3: images are stored upright (EXIF orientation applied); caches of format 2 hold them as stored.
_CACHE_FORMAT = 3
log = logging.getLogger(__name__)


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
    """The distinct (width, height) of the images in a file list as a viewer shows them (EXIF orientation
    applied), read from headers (no pixels decoded).

    A file whose header cannot be read is left out here; decoding it reports it as a bad image.
    """
    sizes = set()
    for path in paths:
        try:
            with Image.open(path) as im:
                sizes.add(shown_size(im))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
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


def file_fingerprint(paths: Sequence[str | Path]) -> str:
    """Changes when any file's size or modification time does (no pixels read)."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_file(cache_dir: str | Path, items: Sequence, tag: str, kind: str) -> Path:
    """Where the result for this exact item list and settings lives: one file per (items, tag)."""
    digest = hashlib.sha256(tag.encode())
    for item in items:
        digest.update(os.fsencode(os.path.abspath(item)) + b"\n")
    return Path(cache_dir) / f"{kind}-{digest.hexdigest()[:24]}.pt"


def load_cached(path: Path, fingerprint: str) -> dict | None:
    """The payload saved at `path` if it is readable and was made from files with this fingerprint.

    A file cut short by a crash or a full disk is decoded again with a warning: it is a cache, never the
    reason a run fails.
    """
    if not path.exists():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable cache file is rebuilt
        log.warning("cache file %s is unreadable (%s); rebuilding it", path, type(error).__name__)
        return None
    return cached if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint else None


def save_cached(path: Path, payload: dict) -> None:
    """Atomic (temporary file + rename): a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as error:
        log.warning("could not write the cache file %s (%s); continuing without it", path, error)


@dataclass
class Decoded:
    images: torch.Tensor  # uint8 (N, C, crop, crop) in the order of the items; rows of bad items are zero
    bad: dict[str, str]  # item → why it could not be decoded


def decode_to_uint8(
    items: Sequence,
    size: int,
    in_chans: int = 3,
    crop_size: int | None = None,
    interpolation: str = "bilinear",
    cache_dir: str | Path | None = None,
    num_threads: int | None = None,
    read: Callable[[object], Image.Image] | None = None,
) -> Decoded:
    """Decode each image once into a (N, in_chans, crop, crop) uint8 tensor, in the order of `items`.

    Each image is resized so its shorter side is `size`, then centre-cropped to `crop_size` (default `size`):
    train images are stored whole-ish at `size` so a RandomResizedCrop still has pixels to choose from, eval
    images as the final Resize(size)+CenterCrop(crop_size) the model sees. `read` turns an item into a PIL
    image in the right mode (default: `tlbench.data.images.read_image` on a file path). This pass is also the
    bad-image check: a file that cannot be decoded is listed in `bad`, not raised. With `cache_dir` (file
    paths only) the result is saved there, keyed by the file list and these settings, and decoded again
    when any file's size or modification time changes.
    """
    read = read or (lambda path: read_image(path, in_chans))
    crop_size = size if crop_size is None else crop_size
    tag = f"v{_CACHE_FORMAT}|{size}|{crop_size}|{in_chans}|{interpolation}"
    path = fingerprint = None
    if cache_dir is not None:
        path, fingerprint = cache_file(cache_dir, items, tag, "uint8"), file_fingerprint(items)
        cached = load_cached(path, fingerprint)
        if cached is not None:
            return Decoded(cached["images"], dict(cached["bad"]))

    def decode_one(item) -> np.ndarray | str:
        try:
            im = resize_center_crop(read(item), size, crop_size, interpolation)
        except BadImageError as error:
            cause = error.__cause__ or error  # the reason alone: the item is the key it is listed under
            return f"{type(cause).__name__}: {cause}"
        return np.array(im).reshape(crop_size, crop_size, in_chans)

    images = torch.zeros((len(items), crop_size, crop_size, in_chans), dtype=torch.uint8)
    bad = {}
    # PIL releases the GIL while decoding and resizing, so threads scale without pickling pixels around.
    with ThreadPoolExecutor(max_workers=num_threads or min(32, os.cpu_count() or 1)) as pool:
        for i, pixels in enumerate(pool.map(decode_one, items, chunksize=64)):
            if isinstance(pixels, str):
                bad[items[i]] = pixels
            else:
                images[i] = torch.from_numpy(pixels)
    decoded = Decoded(images.permute(0, 3, 1, 2).contiguous(), bad)
    if path is not None:
        save_cached(path, {"images": decoded.images, "bad": bad, "fingerprint": fingerprint, "tag": tag})
    return decoded


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

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # `generator` is unused: normalising draws nothing; it keeps one signature for every transform.
        scale, shift = self._scale_shift(x.device)
        out = torch.addcmul(shift, x.float(), scale)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out.to(self.dtype)


class EvalPreprocess(Normalize):
    """Eval images are cropped when decoded (decode_to_uint8 with crop_size), so only normalising is left."""


class GpuAugment:
    """RandomResizedCrop + RandomHorizontalFlip (+ a policy) + Normalize for a uint8 batch, on its device.

    Every sample gets its own box and flip, drawn from the generator passed in (the loader's, seeded per
    epoch, so a resumed run draws what the uninterrupted one drew). `policy` (data.augment: torchvision's
    TrivialAugmentWide or RandAugment) then runs on each cropped uint8 image by itself — a v2 policy given
    a batch would apply one operation to all of it — with torch's global RNG seeded from that generator for
    the batch, so it is as reproducible as the crops. Output: float (or `dtype`), normalised, channels_last
    when asked.
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
        policy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.crop_size = crop_size
        self.policy = policy
        self.scale = scale
        self.ratio = ratio
        self.hflip = hflip
        self.interpolation = interpolation
        self.normalize = Normalize(mean, std, dtype=dtype, channels_last=channels_last)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(n, height, width, self.scale, self.ratio, generator, images.device)
        flip = None
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=images.device) < 0.5
        cropped = resized_crop(images, boxes, self.crop_size, flip, self.interpolation)
        if self.policy is not None:
            cropped = self.apply_policy(cropped, generator)
        return self.normalize(cropped)

    def apply_policy(self, cropped: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,), generator=generator, device=cropped.device))
        images = cropped.round_().clamp_(0, 255).to(torch.uint8)
        with torch.random.fork_rng(devices=[]):  # the policies draw their choices on the CPU
            torch.manual_seed(seed)
            return torch.stack([self.policy(image) for image in images])


def epoch_generator(device: torch.device, seed: int, epoch: int) -> torch.Generator:
    """One generator per (seed, epoch): epoch k draws the same numbers whether or not the run was resumed."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


# data.balance=sampler draws class-balanced epochs only where the largest training class has at least this
# many times the images of the smallest.
IMBALANCED_RATIO = 1.5


def epoch_order(labels: torch.Tensor, generator: torch.Generator, balanced: bool = False) -> torch.Tensor:
    """The indices one training epoch visits, drawn from the epoch's generator: a permutation, or
    (`balanced`, data.balance=sampler) as many draws with replacement, each class equally likely — what
    torch's WeightedRandomSampler draws with inverse class-frequency weights, but seeded per epoch so a
    resumed run draws the same. Where the classes are within IMBALANCED_RATIO of each other a permutation is
    kept: a draw with replacement leaves about a third of the images out of each epoch, a bigger loss on a
    small, nearly balanced set (hymenoptera's 124:121) than the imbalance it would correct."""
    n = len(labels)
    counts = torch.bincount(labels) if balanced else None
    present = counts[counts > 0] if counts is not None else None
    if present is None or float(present.max()) < IMBALANCED_RATIO * float(present.min()):
        return torch.randperm(n, generator=generator, device=labels.device)
    weights = (1.0 / counts.clamp(min=1).double())[labels]
    return torch.multinomial(weights, n, replacement=True, generator=generator)


class InMemoryLoader:
    """Batches of (transform(images[idx]), labels[idx]) from tensors, shuffled anew (and seeded) each epoch.

    The tensors stay wherever they are (move them to the GPU once), so indexing a batch is a gather on that
    device and nothing is copied per step. `transform(x, generator)` (e.g. GpuAugment) gets the epoch's
    generator. `epoch_of` says which epoch is starting (the trainer's); without it each pass counts as the
    next epoch. `balanced`: each epoch a class-balanced draw (`epoch_order`) instead of a permutation. Also
    serves cached features: any (N, ...) tensor works.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        seed: int = 0,
        epoch_of: Callable[[], int] | None = None,
        balanced: bool = False,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.transform = transform
        self.seed = seed
        self.epoch_of = epoch_of
        self.balanced = balanced
        self.passes = 0

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch_of() if self.epoch_of is not None else self.passes
        self.passes += 1
        n, device = len(self.labels), self.labels.device
        generator = epoch_generator(device, self.seed, epoch)
        order = epoch_order(self.labels, generator, self.balanced) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                x, y = (
                    self.images[start : start + self.batch_size],
                    self.labels[start : start + self.batch_size],
                )
            else:
                idx = order[start : start + self.batch_size]
                x, y = self.images[idx], self.labels[idx]
            yield (self.transform(x, generator) if self.transform is not None else x), y
