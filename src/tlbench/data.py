"""The data side of an experiment: where images come from, which of them are used, and how they are shown
to the network.

Sources give labelled items per split (train / val / test); `ImageDataModule` takes a per-class subset,
drops unreadable files (and says which), and wraps everything in transforms derived from the backbone's
pretrained preset — the one place mean/std, crop size and interpolation come from.

Two ways to show images: streaming (a DataLoader decodes and transforms every image on the CPU each
epoch) or, with `gpu_cache=True`, each split decoded once into uint8 on the trainer's device, batches
augmented there (`train_gpu_transform` / `eval_gpu_transform`, applied by the module after transfer).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
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
from tlbench.images import check_image, convert_mode, read_image

log = logging.getLogger(__name__)

SOURCES = ("imagefolder", "cifar10", "fashion_mnist")
SPLITS = ("train", "val", "test")
# torchvision's list leaves out GIF, which real folders contain (hymenoptera's imageNotFound.gif).
IMAGE_EXTENSIONS = tuple(sorted(set(IMG_EXTENSIONS) | {".gif"}))
# Where Debian's `dataset-fashion-mnist` package puts the original files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataError(ValueError):
    """The data on disk cannot be used as configured; the message says which file or key and what to do."""


@dataclass
class LabelledItems:
    """One split: what to read (file paths, or indices into an in-memory array) and the class of each."""

    items: list
    targets: list[int]

    def select(self, indices: Sequence[int]) -> LabelledItems:
        return LabelledItems([self.items[i] for i in indices], [self.targets[i] for i in indices])

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class SourceData:
    classes: list[str]
    splits: dict[str, LabelledItems]
    read: Callable[[object], Image.Image]
    # Which split stands in for a missing test split, so results say what "test" means.
    test_split: str = "test"
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- sources
def list_class_folder(folder: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """Class name → its image files, for one split folder laid out as <folder>/<class>/<image>."""
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist; check data.root")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{folder} has no class folders; expected {folder}/<class name>/<image files> "
            "(one sub-folder per class)"
        )
    files = {}
    for class_dir in class_dirs:
        images = sorted(
            p
            for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not images:
            raise DataError(
                f"class folder {class_dir} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        files[class_dir.name] = images
    return [d.name for d in class_dirs], files


def to_items(classes: list[str], files: dict[str, list[Path]]) -> LabelledItems:
    items, targets = [], []
    for label, name in enumerate(classes):
        items += [str(p) for p in files[name]]
        targets += [label] * len(files[name])
    return LabelledItems(items, targets)


def stratified_split(split: LabelledItems, fraction: float, seed: int) -> tuple[LabelledItems, LabelledItems]:
    """Seeded per-class split; every class with ≥ 2 images keeps at least one on each side."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    targets = np.asarray(split.targets)
    keep, held_out = [], []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        n_out = int(round(len(members) * fraction))
        n_out = min(max(n_out, 1), len(members) - 1) if len(members) >= 2 else 0
        held_out += members[:n_out].tolist()
        keep += members[n_out:].tolist()
    return split.select(sorted(keep)), split.select(sorted(held_out))


def image_folder_source(root: str | Path, val_fraction: float, seed: int, in_chans: int) -> SourceData:
    """<root>/{train,val[,test]}/<class>/..., or <root>/<class>/... split into train/val by `val_fraction`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={root} does not exist; point data.root at your image folder")
    notes = []
    if (root / "train").is_dir():
        class_lists = {s: list_class_folder(root / s) for s in SPLITS if (root / s).is_dir()}
        classes = class_lists["train"][0]
        for split, (split_classes, _) in class_lists.items():
            if split_classes != classes:
                only_train = sorted(set(classes) - set(split_classes))
                only_here = sorted(set(split_classes) - set(classes))
                raise DataError(
                    f"class folders of {root / split} differ from {root / 'train'}: "
                    f"only in train: {only_train or '-'}; only in {split}: {only_here or '-'}. "
                    "Every split needs the same class folders."
                )
        splits = {s: to_items(classes, files) for s, (_, files) in class_lists.items()}
        if "val" not in splits:
            splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
            notes.append(f"no {root / 'val'}: validation is a seeded {val_fraction:.0%} of train")
    else:
        classes, files = list_class_folder(root)
        splits = {}
        splits["train"], splits["val"] = stratified_split(to_items(classes, files), val_fraction, seed)
        notes.append(f"single folder {root}: validation is a seeded {val_fraction:.0%} split")
    test_split = "test"
    if "test" not in splits:
        splits["test"], test_split = splits["val"], "val"
        notes.append("no test split: test metrics are measured on the validation split")
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class folder(s); classification needs at least 2")
    return SourceData(classes, splits, ReadFile(in_chans), test_split, notes)


class ReadFile:
    """Picklable reader for DataLoader workers."""

    def __init__(self, in_chans: int):
        self.in_chans = in_chans

    def __call__(self, path: str) -> Image.Image:
        return read_image(path, self.in_chans)


class ReadArray:
    """Reader for datasets torchvision keeps in memory as uint8 arrays (CIFAR-10, Fashion-MNIST)."""

    def __init__(self, arrays: dict[str, np.ndarray], in_chans: int):
        self.arrays = arrays
        self.in_chans = in_chans

    def __call__(self, item: tuple[str, int]) -> Image.Image:
        split, index = item
        return convert_mode(Image.fromarray(self.arrays[split][index]), self.in_chans)


def torchvision_source(dataset_cls, root: Path, download: bool, how_to_get: str, **kwargs) -> tuple:
    try:
        return tuple(
            dataset_cls(str(root), train=train, download=download, **kwargs) for train in (True, False)
        )
    except (RuntimeError, OSError) as error:
        raise DataError(
            f"{dataset_cls.__name__} is not in {root} and could not be downloaded "
            f"({error.__class__.__name__}: {str(error)[:200]}). {how_to_get}"
        ) from error


def split_arrays(
    train_set, test_set, val_fraction: float, seed: int, in_chans: int, classes: list[str]
) -> SourceData:
    arrays = {"train": np.asarray(train_set.data), "test": np.asarray(test_set.data)}
    train = LabelledItems([("train", i) for i in range(len(train_set))], [int(t) for t in train_set.targets])
    test = LabelledItems([("test", i) for i in range(len(test_set))], [int(t) for t in test_set.targets])
    train, val = stratified_split(train, val_fraction, seed)
    note = f"validation is a seeded {val_fraction:.0%} of the official train split; test is the official test"
    return SourceData(
        classes, {"train": train, "val": val, "test": test}, ReadArray(arrays, in_chans), notes=[note]
    )


def cifar10_source(
    root: str | Path, val_fraction: float, seed: int, in_chans: int, download: bool
) -> SourceData:
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser()
    how = (
        f"Put cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/) in {root}, run once with "
        "internet and data.download=true, or use a folder of images: data=imagefolder data.root=<dir> "
        "(e.g. ../shared/data/cifar10)."
    )
    train, test = torchvision_source(CIFAR10, root, download, how)
    return split_arrays(train, test, val_fraction, seed, in_chans, list(train.classes))


def install_debian_fashion_mnist(root: Path) -> bool:
    """Copy (gunzip) the Debian package's files to where torchvision's reader looks. True if it did."""
    raw = root / "FashionMNIST" / "raw"
    sources = sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz")) if DEBIAN_FASHION_MNIST.is_dir() else []
    if len(sources) < 4:
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for gz in sources:
        target = raw / gz.name.removesuffix(".gz")
        if not target.exists():
            with gzip.open(gz, "rb") as src, open(target.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            target.with_suffix(".part").rename(target)
    return True


def fashion_mnist_source(
    root: str | Path, val_fraction: float, seed: int, in_chans: int, download: bool
) -> SourceData:
    from torchvision.datasets import FashionMNIST

    root = Path(root).expanduser()
    raw = root / "FashionMNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").exists() and install_debian_fashion_mnist(root):
        log.info("Fashion-MNIST copied from %s to %s", DEBIAN_FASHION_MNIST, raw)
    how = (
        "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` "
        f"(files land in {DEBIAN_FASHION_MNIST} and tlbench copies them), "
        f"or put the four *-ubyte(.gz) files in {raw}, or run once with internet."
    )
    train, test = torchvision_source(FashionMNIST, root, download, how)
    return split_arrays(train, test, val_fraction, seed, in_chans, list(train.classes))


def load_source(
    source: str, root: str | Path | None, val_fraction: float, seed: int, in_chans: int, download: bool
) -> SourceData:
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
    if source == "imagefolder":
        if not root:
            raise DataError(
                "data=imagefolder needs data.root=<folder with train/ (val/ test/) or class folders>"
            )
        return image_folder_source(root, val_fraction, seed, in_chans)
    root = Path(root or "data")
    if source == "cifar10":
        return cifar10_source(root, val_fraction, seed, in_chans, download)
    return fashion_mnist_source(root, val_fraction, seed, in_chans, download)


# ---------------------------------------------------------------------------------------- subsets, files
def per_class_subset(split: LabelledItems, per_class: int, seed: int) -> list[int]:
    """Seeded: exactly `per_class` indices of each class (or all a class has), sorted."""
    if per_class < 1:
        raise DataError(f"data.per_class must be a positive number of images or null, got {per_class}")
    rng = np.random.default_rng(seed)
    targets = np.asarray(split.targets)
    chosen = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        chosen += rng.permutation(members)[:per_class].tolist()
    return sorted(chosen)


def find_bad_files(paths: Sequence[str], workers: int) -> dict[str, str]:
    """Path → why it cannot be read, for every unreadable file (decoded in threads: PIL releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(check_image, paths, chunksize=64))
    return {p: r for p, r in zip(paths, reasons) if r is not None}


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
        # Downloads (when online) happen once here, before workers or ranks read the files.
        if self.source != "imagefolder":
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
