"""Where images come from: a folder of class folders, or a torchvision dataset (CIFAR-10, Fashion-MNIST).

Each gives the class names, labelled items per split and a reader from item to PIL image; which items a run
uses (k folds, per-class subsets, unreadable files dropped) is chosen here too, before any training."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from tlbench.data.images import check_image, convert_mode, read_image

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# What `SourceData.test_split` (and results.json's `test_split`) says the test metrics were measured on.
TEST_OWN = "test"  # the source's own test split
TEST_IS_VAL = "val"  # no test split: the validation split, which also chose the checkpoint (optimistic)
TEST_CARVED = "carved from train"  # data.test_fraction: held out of train, never validated on
# torchvision's list leaves out GIF, which real folders contain (hymenoptera's imageNotFound.gif).
IMAGE_EXTENSIONS = tuple(sorted(set(IMG_EXTENSIONS) | {".gif"}))
# Folders that tools leave beside images and that hold no images of the class they sit in: Jupyter's
# .ipynb_checkpoints/ (and every other dot-folder), macOS zip archives' __MACOSX/ (AppleDouble `._x.jpg`
# copies), Synology NAS thumbnails in @eaDir/. Dot-files (`._x.jpg`, `.DS_Store`) are skipped too.
HIDDEN_FOLDERS = ("__MACOSX", "@eaDir")
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
    # What the test metrics are measured on (TEST_OWN, TEST_IS_VAL, TEST_CARVED), as results say.
    test_split: str = TEST_OWN
    notes: list[str] = field(default_factory=list)


def expand_path(path: str | Path) -> Path:
    """`~`, `~user` and `$VAR`/`${VAR}` expanded, as a shell would have: a quoted `data.root='~/data'` reaches
    us unexpanded, and Hydra's own `${oc.env:HOME}` is easy to miss."""
    return Path(os.path.expandvars(os.fspath(path))).expanduser()


def is_hidden(name: str) -> bool:
    """A file or folder name no dataset means as data (see HIDDEN_FOLDERS)."""
    return name.startswith(".") or name in HIDDEN_FOLDERS


def image_files(folder: str | Path) -> list[Path]:
    """The image files under `folder` at any depth, sorted, leaving out hidden files and everything under a
    hidden folder (is_hidden): training and `predict` see the same images. Symlinked files count;
    symlinked folders are not entered (as Path.rglob)."""
    found = []
    for parent, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not is_hidden(name)]  # pruned: never walked into
        for name in files:
            path = Path(parent, name)
            if not is_hidden(name) and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                found.append(path)
    return sorted(found)


def list_class_folder(folder: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """Class name → its image files, for one split folder laid out as <folder>/<class>/<image>."""
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist; check data.root")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))
    if not class_dirs:
        raise DataError(
            f"{folder} has no class folders; expected {folder}/<class name>/<image files> "
            "(one sub-folder per class)"
        )
    files = {}
    for class_dir in class_dirs:
        images = image_files(class_dir)
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
    keep, held_out = stratified_indices(split, fraction, seed)
    return split.select(keep), split.select(held_out)


def stratified_indices(split: LabelledItems, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held-out) indices, sorted, of a seeded per-class split (see `stratified_split`)."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(split.targets)
    keep, held_out = [], []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        n_out = int(round(len(members) * fraction))
        n_out = min(max(n_out, 1), len(members) - 1) if len(members) >= 2 else 0
        held_out += members[:n_out].tolist()
        keep += members[n_out:].tolist()
    return sorted(keep), sorted(held_out)


def carve_test_split(data: SourceData, fraction: float | None, seed: int) -> None:
    """data.test_fraction: a seeded, stratified test split carved from train, for a source with none."""
    if fraction is None:
        return
    if data.test_split != TEST_IS_VAL:
        data.notes.append(f"data.test_fraction={fraction} not used: the source has its own test split")
        return
    train = data.splits["train"]
    keep, carved = stratified_indices(train, fraction, seed)
    data.splits["train"], data.splits["test"] = train.select(keep), train.select(carved)
    data.test_split = TEST_CARVED
    data.notes.append(
        f"test is a seeded, stratified {fraction:.0%} of train (data.test_fraction), never validated on"
    )


def fold_of_each(split: LabelledItems, folds: int, seed: int) -> list[int]:
    """Seeded and stratified: the fold (0 … folds-1) of every item. Each class is shuffled and dealt
    round-robin, starting where the previous class stopped, so a class's count, and a fold's size, differ
    between folds by at most one."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(split.targets)
    assignment = np.empty(len(targets), dtype=int)
    dealt = 0
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        if len(members) < folds:
            raise DataError(
                f"data.folds={folds} needs at least {folds} images of every class; class {label} has "
                f"{len(members)}: lower data.folds"
            )
        assignment[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return assignment.tolist()


def split_by_fold(
    split: LabelledItems, assignment: list[int], fold: int
) -> tuple[LabelledItems, LabelledItems]:
    """(the items of the other folds, the items of `fold`) for a fold assignment from `fold_of_each`."""
    train = [i for i, f in enumerate(assignment) if f != fold]
    val = [i for i, f in enumerate(assignment) if f == fold]
    return split.select(train), split.select(val)


def cross_validation_pool(data: SourceData) -> LabelledItems:
    """What k-fold partitions: train and val together, both carved from the images that are not test."""
    train, val = data.splits["train"], data.splits["val"]
    return LabelledItems(train.items + val.items, train.targets + val.targets)


def image_folder_source(root: str | Path, val_fraction: float, seed: int, in_chans: int) -> SourceData:
    """<root>/{train,val[,test]}/<class>/..., or <root>/<class>/... split into train/val by `val_fraction`."""
    root = expand_path(root)
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
    test_split = TEST_OWN
    if "test" not in splits:
        splits["test"], test_split = splits["val"], TEST_IS_VAL
        notes.append(
            "no test split: test metrics are measured on the validation split, which also chooses the "
            "checkpoint (optimistic); data.test_fraction=0.2 carves a held-out test split from train"
        )
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
        self.arrays, self.in_chans = arrays, in_chans

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
            f"({error.__class__.__name__}: {' '.join(str(error).split())[:200]}). {how_to_get}"
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

    root = expand_path(root)
    how = (
        f"Put cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/) in {root}, run once with "
        "internet and data.download=true, or use a folder of images: data=imagefolder data.root=<dir> "
        "(e.g. ../shared/data/cifar10)."
    )
    train, test = torchvision_source(CIFAR10, root, download, how)
    return split_arrays(train, test, val_fraction, seed, in_chans, list(train.classes))


# The four files torchvision's FashionMNIST reads, uncompressed, from <root>/FashionMNIST/raw/.
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def gather_fashion_mnist(root: Path) -> Path | None:
    """The four files, uncompressed, where torchvision reads them (<root>/FashionMNIST/raw/), from there
    (`.gz` or not), <root> or Debian's package folder: given `.gz` files, torchvision checks their md5 and, as
    Debian repacks them, downloads (offline: fails). Returns where they came from (None: not all four)."""
    raw = root / "FashionMNIST" / "raw"
    for folder in (raw, root, DEBIAN_FASHION_MNIST):
        found = [_ubyte_file(folder, name) for name in FASHION_MNIST_FILES]
        if all(found):
            break
    else:
        return None
    raw.mkdir(parents=True, exist_ok=True)
    for name, source in zip(FASHION_MNIST_FILES, found, strict=True):
        target = raw / name
        if target.exists():
            continue
        part = raw / f"{name}.part"  # renamed when complete: an interrupted copy is never read
        with (
            gzip.open(source) if source.suffix == ".gz" else open(source, "rb") as src,
            open(part, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        part.rename(target)
    return folder


def _ubyte_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_source(
    root: str | Path, val_fraction: float, seed: int, in_chans: int, download: bool
) -> SourceData:
    from torchvision.datasets import FashionMNIST

    root = expand_path(root)
    raw = root / "FashionMNIST" / "raw"
    found_in = gather_fashion_mnist(root)
    if found_in is not None and found_in != raw:
        log.info("Fashion-MNIST: unpacked from %s to %s", found_in, raw)
    names = ", ".join(f"{name}(.gz)" for name in FASHION_MNIST_FILES)
    how = (
        "Offline, without root: `make quickstart-data` (apt-get download dataset-fashion-mnist, then "
        f"dpkg-deb -x; or `sudo apt-get install dataset-fashion-mnist`: files in {DEBIAN_FASHION_MNIST}), "
        f"or put {names} (Zalando's originals or Debian's repacked copies) in {raw.resolve()}; "
        "online, data.download=true fetches them."
    )
    if found_in is None and not download:
        raise DataError(f"Fashion-MNIST is not in {raw.resolve()} (data.download=false). {how}")
    train, test = torchvision_source(FashionMNIST, root, download and found_in is None, how)
    return split_arrays(train, test, val_fraction, seed, in_chans, list(train.classes))


def load_source(
    source: str, root: str | Path | None, val_fraction: float, seed: int, in_chans: int, download: bool
) -> SourceData:
    """The labelled splits of data.source (schema.SOURCES; checked before this)."""
    if source == "imagefolder":
        return image_folder_source(root, val_fraction, seed, in_chans)
    root = Path(root or "data")
    if source == "cifar10":
        return cifar10_source(root, val_fraction, seed, in_chans, download)
    return fashion_mnist_source(root, val_fraction, seed, in_chans, download)


def per_class_subset(
    split: LabelledItems, per_class: int, seed: int, classes: Sequence[str] | None = None, key: str = ""
) -> list[int]:
    """Seeded: exactly `per_class` indices of each class (or all a class has), sorted. With `classes` and
    `key` (data.per_class): one warning naming the classes that have fewer, and how many each gives."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(split.targets)
    labels = np.unique(targets)
    chosen = [rng.permutation(np.flatnonzero(targets == label))[:per_class] for label in labels]
    if classes is not None:
        short = {classes[int(c)]: len(kept) for c, kept in zip(labels, chosen) if len(kept) < per_class}
        if short:
            listed = ", ".join(f"{name}: {count}" for name, count in short.items())
            log.warning(
                "%s=%d is more than %d class(es) have; using all they have (%s); results.json lists "
                "the images used per class (train_per_class)", key, per_class, len(short), listed,
            )  # fmt: skip
    return sorted(int(i) for members in chosen for i in members)


def class_counts(split: LabelledItems, classes: Sequence[str]) -> dict[str, int]:
    """How many images of each class `split` holds, in class order (zero for an absent class)."""
    counts = np.bincount(np.asarray(split.targets, dtype=int), minlength=len(classes))
    return {name: int(count) for name, count in zip(classes, counts)}


def find_bad_files(paths: Sequence[str], workers: int) -> dict[str, str]:
    """Path → why it cannot be read, for every unreadable file (decoded in threads: PIL releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(check_image, paths, chunksize=64))
    return {p: r for p, r in zip(paths, reasons) if r is not None}
