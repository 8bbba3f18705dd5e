"""strategy=freeze without running the frozen trunk every step: with bn=eval the trunk is a fixed function,
so `FeaturePipeline` embeds training images once per epoch (a fresh augmented view each, in big batches) and
validation images once, serving (features, label) batches the module sends through the head alone. Test
batches go through the whole network, as a checkpoint reloads it. The trunk embeds in eval mode (no dropout
or stochastic depth); otherwise the head is the same, weight for weight (tests/test_features.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from tlbench.data.loaders import InMemoryLoader

Embed = Callable[[torch.Tensor], torch.Tensor]


class FeatureLoader:
    """(features, labels) batches of one split; embedded again when an epoch needs a new view."""

    def __init__(
        self,
        images: Callable[[], object],
        labels: torch.Tensor,
        embed: Embed,
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch_of: Callable[[], int],
        new_view_each_epoch: bool,
        balanced: bool = False,
    ):
        self.images, self.labels, self.embed = images, labels, embed
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch_of, self.new_view_each_epoch, self.balanced = epoch_of, new_view_each_epoch, balanced
        self.features: torch.Tensor | None = None
        self.epoch: int | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: nothing is embedded before the first batch (Lightning calls iter() just to check).
        epoch = self.epoch_of()
        if self.features is None or (self.new_view_each_epoch and epoch != self.epoch):
            self.features = torch.cat([self.embed(x) for x, _ in self.images()])
            self.labels = self.labels.to(self.features.device)
            self.epoch = epoch
        yield from InMemoryLoader(
            self.features,
            self.labels,
            self.batch_size,
            self.shuffle,
            None,
            self.seed,
            lambda: epoch,
            self.balanced,
        )


class FeaturePipeline:
    """Train and validation batches as a frozen trunk's features; test batches as images."""

    single_device = True

    def __init__(
        self,
        images,
        embed: Embed,
        labels: Callable[[str], torch.Tensor],
        eval_batch_size: int,
        augmented: bool,
        seed: int,
    ):
        self.images, self.embed, self.labels = images, embed, labels
        self.eval_batch_size, self.augmented, self.seed = eval_batch_size, augmented, seed
        self.name = f"{images.name}, trunk features for train/val"

    def loader(
        self, split: str, shuffle: bool, batch_size: int, device: torch.device, epoch_of: Callable[[], int]
    ):
        if split == "test":
            return self.images.loader(split, shuffle, batch_size, device, epoch_of)
        # In dataset order and big batches: the order of the features is the order of the labels.
        ordered = lambda: self.images.loader(split, False, self.eval_batch_size, device, epoch_of)  # noqa: E731
        return FeatureLoader(
            ordered,
            self.labels(split),
            self.embed,
            batch_size,
            shuffle,
            self.seed,
            epoch_of,
            new_view_each_epoch=split == "train" and self.augmented,
            balanced=split == "train" and self.images.settings.balanced_sampler,
        )
