"""Decode once into uint8, optionally cached on disk: streaming decodes every image every epoch and the CPU
sets the pace (~800 images/s; an H100 trains on 10,000+). Also the bad-image check: a bad file is listed."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlbench.data.images import BadImageError, read_image, shown_size
from tlbench.data.preset import resize_center_crop
from tlbench.data.sources import expand_path
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


# Bytes of each file's start and end hashed into the fingerprint, beside size and modification time: an
# image rewritten with the same size and mtime (cp -p, rsync -t, touch -r) is decoded again, not served
# stale. Measured on this 2-core machine (warm page cache, one thread): hymenoptera, 398 files, 0.05 s
# (decoding them: 1.4 s); CIFAR-10 as JPEGs, 20,000 files, 0.8 s (decoding 10,000 of them: 7.6 s). Small
# files are read whole; a big one's middle is not (a pixel edit re-encodes a JPEG or PNG to its end).
_FINGERPRINT_HEAD = _FINGERPRINT_TAIL = 16 * 1024


def file_fingerprint(paths: Sequence[str | Path]) -> str:
    """Changes when any file's size, modification time, or first or last 16 KiB do."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            content = hashlib.blake2b(handle.read(_FINGERPRINT_HEAD), digest_size=16)
            if st.st_size > _FINGERPRINT_HEAD:
                handle.seek(max(_FINGERPRINT_HEAD, st.st_size - _FINGERPRINT_TAIL))
                content.update(handle.read(_FINGERPRINT_TAIL))
        digest.update(f"{st.st_size}:{st.st_mtime_ns}:{content.hexdigest()}\n".encode())
    return digest.hexdigest()


def cache_file(cache_dir: str | Path, items: Sequence, tag: str, kind: str) -> Path:
    """Where the result for this exact item list and settings lives: one file per (items, tag)."""
    digest = hashlib.sha256(tag.encode())
    for item in items:
        digest.update(os.fsencode(os.path.abspath(item)) + b"\n")
    return expand_path(cache_dir) / f"{kind}-{digest.hexdigest()[:24]}.pt"


def load_cached(path: Path, fingerprint: str) -> dict | None:
    """The payload at `path` if readable and of this fingerprint; else None (a cache never fails a run)."""
    try:
        if not path.is_file():
            return None
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated, corrupt or unreadable cache file is a miss
        log.warning("cache file %s is unreadable (%s); rebuilding it", path, type(error).__name__)
        return None
    return cached if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint else None


# Cache folders a write failed in: not tried again by this process, and warned about once.
_unwritable: set[Path] = set()


def save_cached(path: Path, payload: dict) -> None:
    """Atomic. Any failure (read-only, full, a file in the way, no permission: torch.save raises RuntimeError
    where the OS raised OSError) leaves the run going without a disk cache, with one warning per folder."""
    folder = path.parent
    if folder in _unwritable:
        return
    try:
        write_atomic(path, lambda handle: torch.save(payload, handle))
    except Exception as error:  # noqa: BLE001 - a cache is an optimisation: nothing about it fails a run
        _unwritable.add(folder)
        log.warning(
            "cache folder %s cannot be written (%s); continuing without a disk cache (images are decoded "
            "each run): set TLBENCH_CACHE_DIR or data.cache_dir to a writable folder, or data.cache_dir=null",
            folder, why_unwritable(folder, error),
        )  # fmt: skip


def why_unwritable(folder: Path, error: Exception) -> str:
    """The OS's reason and the free space: torch.save's RuntimeError on a full disk says neither."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:  # torch.save's own messages ("unexpected pos 896 vs 790" on a full disk) mean nothing to a user
        reason = f"{type(error).__name__} while writing"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{existing} is a file"
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return reason
    return f"{reason}; {free / 2**20:.0f} MB free on that disk"


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
