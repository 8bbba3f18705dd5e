"""The data side of an experiment: `ImageDataModule` takes a source's splits (sources.py), re-splits them
into k folds and per-class subsets where asked, and hands them to one pipeline (pipelines.py, features.py)
that leaves out unreadable files and serves batches. Preprocessing comes from the backbone's preset alone."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

from tlbench.config.schema import DataConfig
from tlbench.data.features import FeaturePipeline
from tlbench.data.pipelines import FeedSettings, MemoryPipeline, StreamingPipeline
from tlbench.data.preset import Preset, eval_transform, train_transform
from tlbench.data.sources import (
    SPLITS,
    TEST_CARVED,
    TEST_IS_VAL,
    DataError,
    LabelledItems,
    SourceData,
    carve_test_split,
    cross_validation_pool,
    fold_of_each,
    load_source,
    per_class_subset,
    split_by_fold,
)
from tlbench.results.files import write_atomic

log = logging.getLogger(__name__)
# data.val_per_class=auto validates on at least this many images: accuracy's standard error ≤ 1.6 points.
VAL_AUTO_MIN_IMAGES = 1000
# data.test_per_class draws its subset with this seed, not the run's: every run of a comparison (any seed,
# strategy or data.per_class) tests the same images, which the report's paired verdicts need.
TEST_SEED = 0
__all__ = ["ImageDataModule", "eval_transform", "train_transform", "with_image_size", "default_cache_dir"]


def with_image_size(preset: Preset, image_size: int | None) -> Preset:
    """Train/eval at another resolution, keeping the preset's resize-to-crop ratio."""
    if image_size is None:
        return preset
    ratio = preset.resize_size / preset.crop_size
    return replace(preset, crop_size=int(image_size), resize_size=int(round(image_size * ratio)))


def default_cache_dir(cache_dir: str | None) -> str | None:
    """`auto`: $TLBENCH_CACHE_DIR, else ~/.cache/tlbench — shared by every run, so a sweep decodes once."""
    if cache_dir != "auto":
        return cache_dir
    return os.environ.get("TLBENCH_CACHE_DIR") or str(Path("~/.cache/tlbench").expanduser())


class ImageDataModule(L.LightningDataModule):
    """Train / val / test loaders for one source, sized and normalised for one backbone's preset."""

    def __init__(self, config: DataConfig, preset: Preset, seed: int, run_dir: str | Path | None = None):
        """`run_dir`: where the images a run used are recorded (None: nowhere)."""
        super().__init__()
        if len(preset.mean) != config.in_chans:
            raise DataError(
                f"the preset has {len(preset.mean)} channel statistics but data.in_chans={config.in_chans}"
            )
        self.config, self.seed = config, seed
        self.preset = with_image_size(preset, config.image_size)
        self.batch_size = config.batch_size
        self.eval_batch_size = config.eval_batch_size or 2 * config.batch_size
        self.train_crop_scale = tuple(config.train_crop_scale)
        self.run_dir = Path(run_dir) if run_dir else None
        self.settings = FeedSettings(
            preset=self.preset,
            in_chans=config.in_chans,
            crop_scale=self.train_crop_scale,
            hflip=config.hflip,
            seed=seed,
            num_workers=(os.cpu_count() or 1) if config.num_workers is None else config.num_workers,
            cache_dir=default_cache_dir(config.cache_dir),
            memory_max_gb=config.memory_max_gb,
            augment=config.augment,
            balanced_sampler=config.balance == "sampler",
        )
        self.pipeline: StreamingPipeline | MemoryPipeline | FeaturePipeline | None = None
        self.data: SourceData | None = None
        self.bad_images: dict[str, str] = {}
        self.eval_subsets: dict[str, int | None] = {}

    @property
    def classes(self) -> list[str]:
        self.setup()
        return self.data.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def augments(self) -> bool:
        """Whether two passes over the training images show the network different views."""
        return self.train_crop_scale != (1.0, 1.0) or self.config.hflip or self.config.augment != "crop_flip"

    def prepare_data(self) -> None:
        # Download once, before workers or ranks read; a module already set up (train.py) has its data.
        if self.config.source != "imagefolder" and self.data is None:
            self.load()

    def load(self) -> SourceData:
        data = self.config
        return load_source(data.source, data.root, data.val_fraction, self.seed, data.in_chans, data.download)

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        data = self.load()
        per_class = self.config.per_class
        # Before k-fold and subsets: the carved test images are never trained or validated on.
        carve_test_split(data, self.config.test_fraction, self.seed)
        if self.config.folds is not None:
            self.cross_validate(data)
        for note in data.notes:
            log.info(note)
        if per_class is not None:
            data.splits["train"] = data.splits["train"].select(
                per_class_subset(data.splits["train"], per_class, self.seed, data.classes, "data.per_class")
            )
        self.eval_subsets = self.subset_evaluation(data)
        self.pipeline = self.choose_pipeline(data)
        self.bad_images = self.pipeline.load(data)
        self.report_bad_images()
        check_every_class_is_present(data, self.config.root or self.config.source)
        if per_class is not None:
            self.save_record("subset.json", data.splits["train"], per_class=per_class)
        if data.test_split == TEST_CARVED:
            self.save_record("test_split.json", data.splits["test"], test_fraction=self.config.test_fraction)
        self.data = data
        log.info("data pipeline: %s", self.pipeline.name)

    def subset_evaluation(self, data: SourceData) -> dict[str, int | None]:
        """data.val_per_class / data.test_per_class: seeded per-class subsets of the splits a run evaluates,
        so a small training subset is not outweighed by evaluating thousands of images. Returns what was
        used (results.json's `eval_subsets`)."""
        used = {"val_per_class": resolved_val_per_class(self.config, len(data.classes))}
        used["test_per_class"] = self.config.test_per_class
        for split, seed in (("val", self.seed), ("test", TEST_SEED)):
            per_class, whole = used[f"{split}_per_class"], data.splits[split]
            if per_class is None:
                continue
            key = f"{split}_per_class"
            asked = getattr(self.config, key) != "auto"  # auto takes what a class has without a warning
            chosen = per_class_subset(whole, per_class, seed, data.classes if asked else None, f"data.{key}")
            data.splits[split] = whole.select(chosen)
            if len(data.splits[split]) < len(whole):
                setting = f"data.{key}={getattr(self.config, key)}: {per_class} per class"
                log.info("%s: %d of %d images (%s)", split, len(data.splits[split]), len(whole), setting)
        train, test = len(data.splits["train"]), len(data.splits["test"])
        if used["test_per_class"] is None and test > 10 * train:
            log.info(
                "testing on all %d test images, %.0fx the training images: data.test_per_class=N tests every "
                "run on the same N per class", test, test / max(train, 1),
            )  # fmt: skip
        return {**used, "test_subset_seed": TEST_SEED}

    def cross_validate(self, data: SourceData) -> None:
        """data.folds=K: train+val in K folds; fold data.fold validates (and tests if none), others train."""
        pool, folds, fold = cross_validation_pool(data), self.config.folds, self.config.fold
        assignment = fold_of_each(pool, folds, self.seed)
        data.splits["train"], data.splits["val"] = split_by_fold(pool, assignment, fold)
        if data.test_split == TEST_IS_VAL:
            data.splits["test"] = data.splits["val"]
        data.notes.append(
            f"k-fold: train and val pooled ({len(pool)} images) into {folds} seeded stratified folds; "
            f"fold {fold} validates" + (", and is the test split" if data.test_split == TEST_IS_VAL else "")
        )
        self.save_record("folds.json", pool, folds=folds, fold=fold, fold_of_item=assignment)

    def choose_pipeline(self, data: SourceData) -> StreamingPipeline | MemoryPipeline:
        """`auto`: memory when the decoded splits fit data.memory_max_gb, and a policy has a GPU."""
        if self.config.pipeline == "streaming":
            return StreamingPipeline(self.settings)
        memory = MemoryPipeline(self.settings)
        if self.config.pipeline == "memory":
            return memory
        if self.config.augment != "crop_flip" and not torch.cuda.is_available():
            # The memory path runs a policy image by image on uint8 tensors in the training process; on a
            # CPU, torchvision's PIL path in loader workers is ~4x faster (benchmarks/AUGMENT_SPEED.md).
            log.info("data.pipeline=auto: data.augment=%s on a CPU streams (faster)", self.config.augment)
            return StreamingPipeline(self.settings)
        size = memory.size_gb(data, memory.plans(data))
        if size <= self.settings.memory_max_gb:
            return memory
        log.info(
            "data.pipeline=auto: the decoded images would take %.1f GB (> data.memory_max_gb=%s); streaming",
            size,
            self.settings.memory_max_gb,
        )
        return StreamingPipeline(self.settings)

    def report_bad_images(self) -> None:
        """Unreadable files are found before training starts, not as a crash in epoch 3."""
        if not self.bad_images:
            return
        listing = "\n".join(f"  {path}: {reason}" for path, reason in sorted(self.bad_images.items()))
        if self.config.on_bad_image == "error" and len(self.bad_images) == 1:
            ((path, reason),) = self.bad_images.items()
            raise DataError(
                f"unreadable image {path} ({reason}); remove or replace it, or set data.on_bad_image=skip "
                "to train without it"
            )
        if self.config.on_bad_image == "error":
            raise DataError(
                f"{len(self.bad_images)} unreadable image(s):\n{listing}\n"
                "Remove or replace them, or set data.on_bad_image=skip to train without them."
            )
        warnings.warn(f"skipping {len(self.bad_images)} unreadable image(s):\n{listing}", stacklevel=2)

    def use_features(self, embed: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Serve train and validation batches as `embed(images)` (a frozen trunk) instead of images."""
        self.setup()
        if not isinstance(self.pipeline, FeaturePipeline):
            self.pipeline = FeaturePipeline(
                self.pipeline, embed, self.labels, self.eval_batch_size, self.augments, self.seed
            )

    def preview_batch(self, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images as the network receives them, also when training batches are trunk features."""
        images = self.pipeline.images if isinstance(self.pipeline, FeaturePipeline) else self.pipeline
        return next(iter(images.loader("train", True, size, self.device, self.current_epoch)))

    @property
    def device(self) -> torch.device:
        """Where batches are made: the attached trainer's device, else the CPU."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def current_epoch(self) -> int:
        """The epoch of the next pass, asked at its first batch (after Lightning restored a checkpoint's)."""
        return self.trainer.current_epoch if self.trainer is not None else 0

    def class_weights(self) -> list[float] | None:
        """data.balance=loss: inverse class frequencies of the training split, normalised to mean 1 so the
        loss keeps its scale; None otherwise or where the classes are equal (1s would only add rounding)."""
        if self.config.balance != "loss":
            return None
        counts = torch.bincount(self.labels("train"), minlength=self.num_classes).double()
        if bool((counts == counts[0]).all()):
            return None
        inverse = 1.0 / counts
        return (inverse / inverse.mean()).tolist()

    def labels(self, split: str) -> torch.Tensor:
        """The class of each image of `split`, in dataset order."""
        self.setup()
        return torch.tensor(self.data.splits[split].targets)

    def save_record(self, name: str, split: LabelledItems, **settings) -> None:
        """Which images a run used (a per-class subset, the k-fold pool), so it can be reproduced exactly."""
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            **settings,
            "seed": self.seed,
            "items": [item if isinstance(item, str) else list(item) for item in split.items],
            "targets": split.targets,
        }
        write_atomic(self.run_dir / name, json.dumps(record))  # a kill mid-write leaves the old record

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {name: len(self.data.splits[name]) for name in SPLITS}

    def loader(self, split: str, shuffle: bool, batch_size: int):
        self.setup()
        if self.pipeline.single_device and self.trainer is not None and self.trainer.world_size > 1:
            raise DataError(
                f"data.pipeline={self.pipeline.name} keeps every image on one device and does not "
                f"shard it across {self.trainer.world_size} processes; use trainer.devices=1 or "
                "data.pipeline=streaming"
            )
        return self.pipeline.loader(split, shuffle, batch_size, self.device, self.current_epoch)

    def train_dataloader(self):
        return self.loader("train", shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self):
        return self.loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self):
        return self.loader("test", shuffle=False, batch_size=self.eval_batch_size)


def resolved_val_per_class(config: DataConfig, num_classes: int) -> int | None:
    """data.val_per_class=auto: with data.per_class set, as many per class as train (validation noise then
    matches what the run can learn from), but at least VAL_AUTO_MIN_IMAGES in all; without it, all."""
    if config.val_per_class != "auto":
        return config.val_per_class
    if config.per_class is None:
        return None
    return max(config.per_class, math.ceil(VAL_AUTO_MIN_IMAGES / num_classes))


def check_every_class_is_present(data: SourceData, where: str) -> None:
    """After unreadable files are left out: a split with no image of some class cannot train or score it."""
    for name, split in data.splits.items():
        if len(split) == 0:
            raise DataError(f"the {name} split of {where} is empty (after leaving out unreadable images)")
        if name != "train":
            continue
        missing = sorted(set(range(len(data.classes))) - set(split.targets))
        if missing:
            names = ", ".join(data.classes[i] for i in missing)
            raise DataError(
                f"the train split of {where} has no readable image of class(es) {names}; "
                "add images to those class folders or remove the folders"
            )
