"""An imbalanced binary grayscale image folder from Fashion-MNIST, for benchmarks/IMBALANCE.md.

T-shirt/top (majority, class 0) vs Shirt (minority, class 1, the "positive" class): a hard pair, 9:1 in
train, balanced val and test. Written as 28 px PNGs, as a user's own folder would be.

python benchmarks/make_imbalanced_fashion_mnist.py /tmp/fmnist_imbalanced
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = {"0_tshirt": 0, "1_shirt": 6}  # folder name → Fashion-MNIST label
COUNTS = {"train": {"0_tshirt": 450, "1_shirt": 50}, "val": 100, "test": 300}


def read(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(SOURCE / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SOURCE / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    train_images, train_labels = read("train")
    test_images, test_labels = read("t10k")
    for folder, label in CLASSES.items():
        # train and val from the official train split (disjoint), test from the official test split.
        pool = rng.permutation(np.flatnonzero(train_labels == label))
        n_train = COUNTS["train"][folder]
        chosen = {
            "train": (train_images, pool[:n_train]),
            "val": (train_images, pool[n_train : n_train + COUNTS["val"]]),
            "test": (test_images, rng.permutation(np.flatnonzero(test_labels == label))[: COUNTS["test"]]),
        }
        for split, (images, indices) in chosen.items():
            target = out / split / folder
            target.mkdir(parents=True, exist_ok=True)
            for i in indices:
                Image.fromarray(images[i]).save(target / f"{i:05d}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
