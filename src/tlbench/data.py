"""The data side of an experiment: where images come from, which of them are used, and how they are shown
to the network.

Sources (sources.py) give labelled items per split; `ImageDataModule` takes a per-class subset,
drops unreadable files (and says which), and wraps everything in transforms derived from the backbone's
pretrained preset — the one place mean/std, crop size and interpolation come from.

Two ways to show images: streaming (a DataLoader decodes and transforms every image on the CPU each
epoch) or, with `gpu_cache=True`, each split decoded once into uint8 on the trainer's device, batches
augmented there (`train_gpu_transform` / `eval_gpu_transform`, applied by the module after transfer).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from tlbench.backbones import Preset
from tlbench.fastdata import (
    EvalPreprocess,
    GpuAugment,
    InMemoryLoader,
    decode_to_uint8,
    image_sizes,
    resize_center_crop_uint8,
)
from tlbench.sources import (
    SPLITS,
    DataError,
    LabelledItems,
    ReadArray,
    SourceData,
    find_bad_files,
    load_source,
    per_class_subset,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- transforms
def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name.lower())
    except ValueError as error:
        valid = ", ".join(m.value for m in InterpolationMode)
        raise DataError(f"unknown interpolation {name!r}; choose one of: {valid}") from error


def with_image_size(preset: Preset, image_size: int | None) -> Preset:
    """Train/eval at another resolution, keeping the preset's resize-to-crop ratio."""
    if image_size is None:
        return preset
    if image_size < 8:
        raise DataError(f"data.image_size must be at least 8 pixels, got {image_size}")
    ratio = preset.resize_size / preset.crop_size
    return replace(preset, crop_size=int(image_size), resize_size=int(round(image_size * ratio)))


def to_normalized_tensor(preset: Preset) -> list:
    return [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(preset.mean), list(preset.std)),
    ]


def eval_transform(preset: Preset) -> T.Compose:
    resize = T.Resize(
        preset.resize_size, interpolation=interpolation_mode(preset.interpolation), antialias=True
    )
    return T.Compose([resize, T.CenterCrop(preset.crop_size), *to_normalized_tensor(preset)])


def train_transform(
    preset: Preset, crop_scale: Sequence[float] = (0.08, 1.0), hflip: bool = True
) -> T.Compose:
    crop = T.RandomResizedCrop(
        preset.crop_size,
        scale=tuple(crop_scale),
        interpolation=interpolation_mode(preset.interpolation),
        antialias=True,
    )
    flip = [T.RandomHorizontalFlip()] if hflip else []
    return T.Compose([crop, *flip, *to_normalized_tensor(preset)])


# -------------------------------------------------------------------------------------- the in-memory cache
@dataclass(frozen=True)
class DecodePlan:
    """How one split is decoded for `gpu_cache`: shorter side resized to `size`, centre-cropped to `crop`."""

    size: int
    crop: int
    # Small same-sized eval images (CIFAR, MNIST) stay native: resized and cropped once on the device.
    resize_on_device: bool
    side_on_device: int  # what the device holds per image: side × side × in_chans bytes


def split_image_sizes(split: LabelledItems, read: Callable) -> set[tuple[int, int]]:
    """The distinct (width, height) of a split's images, from array shapes or file headers."""
    if isinstance(read, ReadArray):
        arrays = {item[0] for item in split.items}
        return {(read.arrays[a].shape[2], read.arrays[a].shape[1]) for a in arrays}
    return image_sizes(split.items)


def decode_plan(name: str, sizes: set[tuple[int, int]], preset: Preset) -> DecodePlan:
    """Train images keep room for RandomResizedCrop (native size, at most resize_size); eval images end
    as the Resize + CenterCrop the network sees."""
    native = min(next(iter(sizes))) if len(sizes) == 1 else None
    small = native is not None and native <= preset.resize_size
    if name == "train":
        size = native if small else preset.resize_size
        return DecodePlan(size, size, False, size)
    if small and len(set(next(iter(sizes)))) == 1:
        # Square: the device's Resize + CenterCrop of the stored image is the streaming path's, exactly.
        return DecodePlan(native, native, True, preset.crop_size)
    return DecodePlan(preset.resize_size, preset.crop_size, False, preset.crop_size)


@dataclass
class MemorySplit:
    images: torch.Tensor  # uint8 (N, C, H, W) on the host
    labels: torch.Tensor
    plan: DecodePlan


class ImageListDataset(Dataset):
    def __init__(self, split: LabelledItems, read: Callable, transform: Callable):
        self.split, self.read, self.transform = split, read, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.transform(self.read(self.split.items[index])), self.split.targets[index]


# ---------------------------------------------------------------------------------------------- the module
class ImageDataModule(L.LightningDataModule):
    """Train / val / test loaders for one source, sized and normalised for one backbone's preset."""

    def __init__(
        self,
        preset: Preset,
        source: str = "imagefolder",
        root: str | None = None,
        in_chans: int = 3,
        per_class: int | None = None,
        val_per_class: int | None = None,
        val_fraction: float = 0.2,
        image_size: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        train_crop_scale: Sequence[float] = (0.08, 1.0),
        hflip: bool = True,
        on_bad_image: str = "skip",
        download: bool = True,
        gpu_cache: bool = False,
        gpu_cache_max_gb: float = 8.0,
        cache_dir: str | None = None,
        seed: int = 0,
        run_dir: str | None = None,
    ):
        super().__init__()
        if on_bad_image not in ("skip", "error"):
            raise DataError(f"data.on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if in_chans not in (1, 3):
            raise DataError(f"data.in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        if batch_size < 1:
            raise DataError(f"data.batch_size must be at least 1, got {batch_size}")
        if len(preset.mean) != in_chans:
            raise DataError(
                f"the preset has {len(preset.mean)} channel statistics but data.in_chans={in_chans}"
            )
        self.preset = with_image_size(preset, image_size)
        self.source, self.root, self.in_chans = source, root, in_chans
        self.per_class, self.val_per_class = per_class, val_per_class
        self.val_fraction, self.seed = val_fraction, seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        self.train_crop_scale, self.hflip = tuple(train_crop_scale), hflip
        self.on_bad_image, self.download = on_bad_image, download
        self.run_dir = Path(run_dir) if run_dir else None
        self.gpu_cache, self.gpu_cache_max_gb, self.cache_dir = gpu_cache, gpu_cache_max_gb, cache_dir
        self.train_gpu_transform = GpuAugment(
            self.preset.crop_size,
            self.preset.mean,
            self.preset.std,
            scale=self.train_crop_scale,
            hflip=hflip,
            interpolation=self.preset.interpolation,
            seed=seed,
        )
        self.eval_gpu_transform = EvalPreprocess(self.preset.mean, self.preset.std)
        self.data: SourceData | None = None
        self.bad_images: dict[str, str] = {}
        self.datasets: dict[str, ImageListDataset] = {}
        self.memory: dict[str, MemorySplit] = {}
        self.device_memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def classes(self) -> list[str]:
        self.setup()
        return self.data.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_data(self) -> None:
        # Downloads (when online) happen once here, before workers or ranks read the files. A module
        # already set up in this process (train.py sets up first, to size the head) has its data.
        if self.source != "imagefolder" and self.data is None:
            load_source(self.source, self.root, self.val_fraction, self.seed, self.in_chans, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        data = load_source(self.source, self.root, self.val_fraction, self.seed, self.in_chans, self.download)
        for note in data.notes:
            log.info(note)
        self.drop_bad_images(data)
        if self.per_class is not None:
            data.splits["train"] = data.splits["train"].select(
                per_class_subset(data.splits["train"], self.per_class, self.seed)
            )
            self.save_subset(data.splits["train"])
        if self.val_per_class is not None:
            # A smaller validation set only where asked: it is checked every epoch.
            val = data.splits["val"]
            data.splits["val"] = val.select(per_class_subset(val, self.val_per_class, self.seed))
        for name, split in data.splits.items():
            if len(split) == 0:
                raise DataError(f"the {name} split of {self.root or self.source} is empty")
        transforms = {"train": train_transform(self.preset, self.train_crop_scale, self.hflip)}
        transforms["val"] = transforms["test"] = eval_transform(self.preset)
        self.datasets = {s: ImageListDataset(data.splits[s], data.read, transforms[s]) for s in SPLITS}
        if self.gpu_cache:
            self.decode_once(data)
        self.data = data

    def drop_bad_images(self, data: SourceData) -> None:
        """Find unreadable files before training starts, not as a crash in epoch 3."""
        files = [item for split in data.splits.values() for item in split.items if isinstance(item, str)]
        if not files:
            return
        self.bad_images = find_bad_files(sorted(set(files)), workers=2 * (os.cpu_count() or 1))
        if not self.bad_images:
            return
        listing = "\n".join(f"  {path}: {reason}" for path, reason in sorted(self.bad_images.items()))
        if self.on_bad_image == "error":
            raise DataError(
                f"{len(self.bad_images)} unreadable image(s):\n{listing}\n"
                "Remove or replace them, or set data.on_bad_image=skip to train without them."
            )
        warnings.warn(f"skipping {len(self.bad_images)} unreadable image(s):\n{listing}", stacklevel=2)
        for name, split in data.splits.items():
            keep = [i for i, item in enumerate(split.items) if item not in self.bad_images]
            data.splits[name] = split.select(keep)

    def decode_once(self, data: SourceData) -> None:
        """Every split into host uint8 tensors, read exactly as the streaming path reads them."""
        splits = dict(data.splits)
        same_as_val = splits["test"].items == splits["val"].items
        if same_as_val:
            del splits["test"]
        plans = {
            name: decode_plan(name, split_image_sizes(split, data.read), self.preset)
            for name, split in splits.items()
        }
        self.check_memory(splits, plans)
        for name, split in splits.items():
            plan = plans[name]
            files_only = all(isinstance(item, str) for item in split.items)
            images = decode_to_uint8(
                split.items,
                plan.size,
                self.in_chans,
                plan.crop,
                self.preset.interpolation,
                cache_dir=self.cache_dir if files_only else None,
                read=data.read,
            )
            self.memory[name] = MemorySplit(images, torch.tensor(split.targets), plan)
        if same_as_val:
            self.memory["test"] = self.memory["val"]

    def check_memory(self, splits: dict[str, LabelledItems], plans: dict[str, DecodePlan]) -> None:
        """Refuse before decoding, not with an out-of-memory error after minutes of it."""
        total = sum(len(splits[name]) * self.in_chans * p.side_on_device**2 for name, p in plans.items())
        total_gb = total / 1e9
        if total_gb > self.gpu_cache_max_gb:
            listing = ", ".join(
                f"{name} {len(splits[name])} × {self.in_chans}×{p.side_on_device}×{p.side_on_device}"
                for name, p in plans.items()
            )
            raise DataError(
                f"data.gpu_cache=true would keep {total_gb:.1f} GB of uint8 images on the device "
                f"({listing}), more than data.gpu_cache_max_gb={self.gpu_cache_max_gb}. "
                "Set data.gpu_cache=false (the streaming path) or raise data.gpu_cache_max_gb."
            )

    @property
    def cache_device(self) -> torch.device:
        """Where the in-memory splits live: the attached trainer's device, else the CPU."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def on_device(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A split's uint8 images and labels on `device`, copied (and eval-resized) once per device."""
        cached = self.memory[split]
        key = "val" if cached is self.memory.get("val") else split
        held = self.device_memory.get(key)
        if held is None or held[1].device != torch.device(device):
            images = cached.images.to(device)
            if cached.plan.resize_on_device:
                p = self.preset
                images = resize_center_crop_uint8(images, p.resize_size, p.crop_size, p.interpolation)
            self.device_memory[key] = held = (images, cached.labels.to(device))
        return held

    def memory_loader(
        self,
        split: str,
        shuffle: bool,
        batch_size: int,
        device: torch.device | None = None,
        transform: Callable | None = None,
    ) -> InMemoryLoader:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise DataError(
                "data.gpu_cache=true keeps every image on one device and does not shard it across "
                f"{self.trainer.world_size} processes; use trainer.devices=1 or data.gpu_cache=false"
            )
        images, labels = self.on_device(split, device or self.cache_device)
        return InMemoryLoader(images, labels, batch_size, shuffle, transform=transform, seed=self.seed)

    def ordered_loader(self, split: str, device: torch.device | None = None):
        """`split` in dataset order, as the network sees it (train augmented, eval preprocessed): for
        embedding a split once, in big batches. Batches are (images, labels)."""
        self.setup()
        if not self.gpu_cache:
            return self.loader(split, shuffle=False, batch_size=self.eval_batch_size)
        transform = self.train_gpu_transform if split == "train" else self.eval_gpu_transform
        return self.memory_loader(split, False, self.eval_batch_size, device, transform)

    def labels(self, split: str) -> torch.Tensor:
        """The class of each image of `split`, in dataset order."""
        self.setup()
        return torch.tensor(self.data.splits[split].targets)

    def save_subset(self, train: LabelledItems) -> None:
        """Which training images a per-class subset used, so the result can be reproduced exactly."""
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "per_class": self.per_class,
            "seed": self.seed,
            "items": [item if isinstance(item, str) else list(item) for item in train.items],
            "targets": train.targets,
        }
        (self.run_dir / "subset.json").write_text(json.dumps(record))

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {name: len(dataset) for name, dataset in self.datasets.items()}

    def loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader | InMemoryLoader:
        self.setup()
        if self.gpu_cache:
            return self.memory_loader(split, shuffle, batch_size)
        workers = self.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader | InMemoryLoader:
        return self.loader("train", shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader | InMemoryLoader:
        return self.loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader | InMemoryLoader:
        return self.loader("test", shuffle=False, batch_size=self.eval_batch_size)
