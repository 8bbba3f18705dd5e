"""How a split's images reach the network: one object per way of feeding batches.

  StreamingPipeline  a DataLoader decodes and transforms every image on the CPU, every epoch: any size
  MemoryPipeline     each image decoded once to uint8 (cached on disk), held and augmented on the device
  FeaturePipeline    (features.py) wraps either for strategy=freeze: the frozen trunk's features
Each `load`s the splits, leaving out unreadable images, and hands out loaders of network-ready batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from tlbench.data.augment import EvalPreprocess, GpuAugment
from tlbench.data.decode import (
    cache_file,
    decode_to_uint8,
    file_fingerprint,
    image_sizes,
    load_cached,
    resize_center_crop_uint8,
    save_cached,
)
from tlbench.data.loaders import EpochLoader, EpochSamples, InMemoryLoader
from tlbench.data.preset import Preset, augment_policy, eval_transform, train_transform
from tlbench.data.sources import SPLITS, DataError, LabelledItems, ReadArray, SourceData, find_bad_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedSettings:
    """What every pipeline needs to know about the images it feeds (one DataModule's settings)."""

    preset: Preset
    in_chans: int
    crop_scale: tuple[float, float]
    hflip: bool
    seed: int
    num_workers: int
    cache_dir: str | None
    memory_max_gb: float
    augment: str = "crop_flip"  # data.augment (AUGMENT_POLICIES)
    # data.balance=sampler: training epochs are class-balanced draws instead of permutations.
    balanced_sampler: bool = False


def drop_items(data: SourceData, bad: dict[str, str]) -> None:
    for name, split in data.splits.items():
        data.splits[name] = split.select([i for i, item in enumerate(split.items) if item not in bad])


class ImageListDataset(Dataset):
    """Images of one split through a transform. An `(index, seed)` (EpochSamples) makes the transform draw
    from that seed alone, in whichever worker, so a resumed epoch sees the uninterrupted run's crops."""

    def __init__(self, split: LabelledItems, read: Callable, transform: Callable):
        self.split, self.read, self.transform = split, read, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int | tuple[int, int]):
        if isinstance(index, int):
            return self.transform(self.read(self.split.items[index])), self.split.targets[index]
        index, seed = index
        image = self.read(self.split.items[index])
        # torchvision's transforms draw from torch's global generator: fork it, so the seed stays local.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), self.split.targets[index]


def find_unreadable(files: list[str], cache_dir: str | None) -> dict[str, str]:
    """The bad-image check of the streaming path, remembered per file list: a sweep checks once."""
    path = fingerprint = None
    if cache_dir is not None and files:
        path, fingerprint = cache_file(cache_dir, files, "scan-v1", "scan"), file_fingerprint(files)
        cached = load_cached(path, fingerprint)
        if cached is not None:
            return dict(cached["bad"])
    bad = find_bad_files(files, workers=2 * (os.cpu_count() or 1))
    if path is not None:
        save_cached(path, {"bad": bad, "fingerprint": fingerprint})
    return bad


class StreamingPipeline:
    name = "streaming"
    single_device = False

    def __init__(self, settings: FeedSettings):
        self.settings = settings
        self.datasets: dict[str, ImageListDataset] = {}

    def load(self, data: SourceData) -> dict[str, str]:
        files = sorted({item for s in data.splits.values() for item in s.items if isinstance(item, str)})
        bad = find_unreadable(files, self.settings.cache_dir)
        drop_items(data, bad)
        s = self.settings
        transforms = {"train": train_transform(s.preset, s.crop_scale, s.hflip, s.augment)}
        transforms["val"] = transforms["test"] = eval_transform(s.preset)
        self.datasets = {
            name: ImageListDataset(data.splits[name], data.read, transforms[name]) for name in SPLITS
        }
        return bad

    def loader(
        self, split: str, shuffle: bool, batch_size: int, device: torch.device, epoch_of: Callable[[], int]
    ) -> DataLoader:
        dataset, workers = self.datasets[split], self.settings.num_workers
        # Training images are augmented: seeded per (seed, epoch), in dataset order too (cached features).
        seeded = shuffle or split == "train"
        balanced = split == "train" and self.settings.balanced_sampler  # data.balance=sampler
        targets = dataset.split.targets
        sampler = EpochSamples(targets, self.settings.seed, epoch_of, shuffle, balanced) if seeded else None
        return EpochLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )


@dataclass(frozen=True)
class DecodePlan:
    """How one split is decoded: shorter side resized to `size`, centre-cropped to `crop`."""

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
    """Train images keep room for RandomResizedCrop; eval images end as the network sees them."""
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


class MemoryPipeline:
    name = "memory"
    single_device = True  # every image on one device: not sharded across DDP processes

    def __init__(self, settings: FeedSettings):
        self.settings = settings
        p = settings.preset
        self.augment = GpuAugment(
            p.crop_size, p.mean, p.std, scale=settings.crop_scale, hflip=settings.hflip,
            interpolation=p.interpolation, policy=augment_policy(settings.augment),
        )  # fmt: skip
        self.preprocess = EvalPreprocess(p.mean, p.std)
        self.splits: dict[str, MemorySplit] = {}
        self.on_devices: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self.decode_plans: dict[str, DecodePlan] | None = None

    @staticmethod
    def distinct_splits(data: SourceData) -> dict[str, LabelledItems]:
        """The splits to decode: a test split that is the validation split (no test folder) is not."""
        splits = dict(data.splits)
        if splits["test"].items == splits["val"].items:
            del splits["test"]
        return splits

    def plans(self, data: SourceData) -> dict[str, DecodePlan]:
        """One plan per split, from the images' sizes; worked out once (file headers are read for it)."""
        if self.decode_plans is None:
            preset = self.settings.preset
            self.decode_plans = {
                name: decode_plan(name, split_image_sizes(split, data.read), preset)
                for name, split in self.distinct_splits(data).items()
            }
        return self.decode_plans

    def size_gb(self, data: SourceData, plans: dict[str, DecodePlan]) -> float:
        splits, chans = self.distinct_splits(data), self.settings.in_chans
        return sum(len(splits[n]) * chans * p.side_on_device**2 for n, p in plans.items()) / 1e9

    def load(self, data: SourceData) -> dict[str, str]:
        s, plans = self.settings, self.plans(data)
        total_gb = self.size_gb(data, plans)
        if total_gb > s.memory_max_gb:
            raise DataError(
                f"data.pipeline=memory would hold {total_gb:.1f} GB of uint8 images "
                f"({self.describe(data, plans)}), more than data.memory_max_gb={s.memory_max_gb}. "
                "Set data.pipeline=streaming or raise data.memory_max_gb."
            )
        bad: dict[str, str] = {}
        decoded = {}
        for name, split in self.distinct_splits(data).items():
            plan = plans[name]
            files_only = all(isinstance(item, str) for item in split.items)
            decoded[name] = decode_to_uint8(
                split.items, plan.size, s.in_chans, plan.crop, s.preset.interpolation,
                cache_dir=s.cache_dir if files_only else None, read=data.read,
            )  # fmt: skip
            bad.update(decoded[name].bad)
        for name, split in self.distinct_splits(data).items():
            keep = [i for i, item in enumerate(split.items) if item not in bad]
            images = decoded[name].images if len(keep) == len(split) else decoded[name].images[keep]
            self.splits[name] = MemorySplit(images, torch.tensor(split.targets)[keep], plans[name])
        if "test" not in self.splits:
            self.splits["test"] = self.splits["val"]
        drop_items(data, bad)
        return bad

    def describe(self, data: SourceData, plans: dict[str, DecodePlan]) -> str:
        splits, c = self.distinct_splits(data), self.settings.in_chans
        return ", ".join(
            f"{n} {len(splits[n])} × {c}×{p.side_on_device}×{p.side_on_device}" for n, p in plans.items()
        )

    def on_device(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A split's uint8 images and labels on `device`, copied (and eval-resized) once per device."""
        cached = self.splits[split]
        key = ("val" if cached is self.splits["val"] else split, device)
        if key not in self.on_devices:
            images = cached.images.to(device)
            if cached.plan.resize_on_device:
                p = self.settings.preset
                images = resize_center_crop_uint8(images, p.resize_size, p.crop_size, p.interpolation)
            self.on_devices[key] = (images, cached.labels.to(device))
        return self.on_devices[key]

    def loader(
        self, split: str, shuffle: bool, batch_size: int, device: torch.device, epoch_of: Callable[[], int]
    ) -> InMemoryLoader:
        images, labels = self.on_device(split, device)
        transform = self.augment if split == "train" else self.preprocess
        balanced = split == "train" and self.settings.balanced_sampler
        return InMemoryLoader(
            images, labels, batch_size, shuffle, transform, self.settings.seed, epoch_of, balanced
        )
