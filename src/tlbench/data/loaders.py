"""Epoch k draws its order and augmentation from (seed, k) alone, resumed or not: `InMemoryLoader` for tensors
on the device (memory pipeline, cached features), `EpochSamples`/`EpochLoader` for a streaming DataLoader."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


def epoch_generator(device: torch.device, seed: int, epoch: int) -> torch.Generator:
    """One generator per (seed, epoch): epoch k draws the same numbers whether or not the run was resumed."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


# data.balance=sampler draws class-balanced epochs only where the largest training class has at least this
# many times the images of the smallest.
IMBALANCED_RATIO = 1.5


def epoch_order(labels: torch.Tensor, generator: torch.Generator, balanced: bool = False) -> torch.Tensor:
    """The indices one training epoch visits: a permutation, or (`balanced`) n draws with replacement, each
    class equally likely (WeightedRandomSampler, seeded per epoch). Classes within IMBALANCED_RATIO keep the
    permutation: drawing with replacement leaves a third of the images out of each epoch, a bigger loss on a
    nearly balanced set (hymenoptera's 124:121) than the imbalance it would correct."""
    n = len(labels)
    counts = torch.bincount(labels) if balanced else None
    present = counts[counts > 0] if counts is not None else None
    if present is None or float(present.max()) < IMBALANCED_RATIO * float(present.min()):
        return torch.randperm(n, generator=generator, device=labels.device)
    weights = (1.0 / counts.clamp(min=1).double())[labels]
    return torch.multinomial(weights, n, replacement=True, generator=generator)


class InMemoryLoader:
    """Batches of (transform(images[idx], generator), labels[idx]) from (N, ...) tensors on their device (a
    gather per step, no copy), ordered by `epoch_order`. `epoch_of` gives the starting epoch (the trainer's);
    without it each pass counts as the next."""

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
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.transform, self.seed, self.epoch_of, self.balanced = transform, seed, epoch_of, balanced
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
            idx = (
                slice(start, start + self.batch_size)
                if order is None
                else order[start : start + self.batch_size]
            )
            x, y = self.images[idx], self.labels[idx]
            yield (self.transform(x, generator) if self.transform is not None else x), y


class EpochSamples(Sampler[tuple[int, int]]):
    """Each epoch, an order (`epoch_order`, or dataset order) and one augmentation seed per image, drawn from
    (seed, epoch). DataLoader workers cannot do this themselves: seeded once when they start, a resumed run's
    workers would not be in the state the uninterrupted run's had reached."""

    def __init__(
        self,
        labels: list[int],
        seed: int,
        epoch_of: Callable[[], int],
        shuffle: bool = True,
        balanced: bool = False,
    ):
        self.labels, self.seed, self.epoch_of = torch.tensor(labels), seed, epoch_of
        self.shuffle, self.balanced = shuffle, balanced

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = epoch_generator(torch.device("cpu"), self.seed, self.epoch_of())
        n = len(self.labels)
        order = epoch_order(self.labels, generator, self.balanced) if self.shuffle else torch.arange(n)
        # Per image, not per position: an image gets the same crop in an epoch whatever the order.
        seeds = torch.randint(2**62, (n,), generator=generator).tolist()
        return iter([(i, seeds[i]) for i in order.tolist()])


class EpochLoader(DataLoader):
    """A DataLoader whose epoch starts at its first batch, not at `iter()`: workers prefetch indices as soon
    as an iterator exists, and Lightning creates one while restoring a checkpoint, before the resumed epoch
    is known, which would then get epoch 0's order and crops."""

    def __iter__(self) -> Iterator:
        # A generator: nothing in its body, super().__iter__() included, runs before the first batch is asked.
        yield from super().__iter__()
