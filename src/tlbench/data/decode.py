"""Decode once into uint8, optionally cached on disk: streaming decodes every image every epoch and the CPU
sets the pace (~800 images/s; an H100 trains on 10,000+). Also the bad-image check: a bad file is listed."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlbench.data.images import BadImageError, read_image, shown_size
from tlbench.data.preset import resize_center_crop
from tlbench.results.files import write_atomic

# 3: images are stored upright (EXIF orientation applied); caches of format 2 hold them as stored.
_CACHE_FORMAT = 3
log = logging.getLogger(__name__)


def image_sizes(paths: Sequence[str | Path]) -> set[tuple[int, int]]:
    """The distinct (width, height) of the images as shown (EXIF), from headers; unreadable ones left out."""
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
    """Resize(resize_size) + CenterCrop(crop_size) of a uint8 batch of equal-sized images (CIFAR, MNIST), on
    its device: PIL on the CPU takes 10 s for CIFAR-10's test set. In chunks: the resize works in float."""
    crop = resize_center_crop(resize_size, crop_size, interpolation)
    out = torch.empty(
        (len(images), images.shape[1], crop_size, crop_size), dtype=torch.uint8, device=images.device
    )
    for i in range(0, len(images), chunk):
        out[i : i + chunk] = crop(images[i : i + chunk])
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
    """The payload at `path` if readable and of this fingerprint; else None (a cache never fails a run)."""
    if not path.exists():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable cache file is rebuilt
        log.warning("cache file %s is unreadable (%s); rebuilding it", path, type(error).__name__)
        return None
    return cached if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint else None


def save_cached(path: Path, payload: dict) -> None:
    """Atomic; a failed write (torch.save raises RuntimeError on a full disk) leaves the run going."""
    try:
        write_atomic(path, lambda handle: torch.save(payload, handle))
    except (OSError, RuntimeError) as error:
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

    Resize(size) then CenterCrop(crop_size, default `size`): train images keep `size` so RandomResizedCrop has
    pixels to choose from; eval images get their final crop. `read`: item → PIL image (default: read_image on
    a path). With `cache_dir` (file paths only) the result is cached, keyed by the file list and settings, and
    decoded again when any file's size or modification time changes."""
    read = read or (lambda path: read_image(path, in_chans))
    crop_size = size if crop_size is None else crop_size
    tag = f"v{_CACHE_FORMAT}|{size}|{crop_size}|{in_chans}|{interpolation}"
    path = fingerprint = None
    if cache_dir is not None:
        path, fingerprint = cache_file(cache_dir, items, tag, "uint8"), file_fingerprint(items)
        cached = load_cached(path, fingerprint)
        if cached is not None:
            return Decoded(cached["images"], dict(cached["bad"]))

    crop = resize_center_crop(size, crop_size, interpolation)

    def decode_one(item) -> np.ndarray | str:
        try:
            im = crop(read(item))
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
