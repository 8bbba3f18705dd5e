"""The quickstart's Fashion-MNIST offline and without root: any copy of the four ubyte files (Zalando's
originals, Debian's repacked `.gz`), where the error message says to put them, is read without a download."""

from __future__ import annotations

import gzip
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

import tlbench.data.sources as sources
from tlbench.data.sources import DataError, load_source

TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format of the original files: zero, zero, type 0x08 (ubyte), rank; big-endian sizes; data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, compress: bool) -> dict[str, np.ndarray]:
    """Tiny files in the original layout; gzip'ed here, so their md5 differs from torchvision's list."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        labels = np.repeat(np.arange(10), per_class)
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (len(labels), 28, 28))
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and no Debian package: only the files a test puts in place."""

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")


@pytest.mark.parametrize(
    "where, compress",
    [("FashionMNIST/raw", True), ("FashionMNIST/raw", False), (".", True), (".", False)],
    ids=["raw-gz", "raw-ubyte", "root-gz", "root-ubyte"],
)
def test_fashion_mnist_reads_the_files_it_is_given_offline(tmp_path, offline, where, compress):
    root = tmp_path / "data"
    arrays = write_fashion_mnist(root / where, compress)
    for download in (True, False):  # download=true (the default) must not try to fetch what is there
        data = load_source("fashion_mnist", root, 0.2, 0, 1, download)
        assert data.classes[0] == "T-shirt/top" and len(data.classes) == 10
        sizes = {split: len(items) for split, items in data.splits.items()}
        assert sizes == {"train": 20, "val": 10, "test": 10}
        first_test = data.splits["test"].items[0]
        assert np.array_equal(np.asarray(data.read(first_test)), arrays["t10k-images-idx3-ubyte"][0])


def test_fashion_mnist_reads_debians_package_folder_without_copying_by_hand(tmp_path, monkeypatch, offline):
    package = tmp_path / "usr/share/datasets/fashion-mnist"
    write_fashion_mnist(package, compress=True)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", package)
    data = load_source("fashion_mnist", tmp_path / "data", 0.2, 0, 1, False)
    assert len(data.splits["test"]) == 10
    unpacked = sorted(p.name for p in (tmp_path / "data/FashionMNIST/raw").iterdir())
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    assert unpacked == sorted(f"{split}-{kind}" for split in ("train", "t10k") for kind in kinds)


def test_missing_fashion_mnist_names_the_routes_that_work_offline(tmp_path, offline):
    root = tmp_path / "data"
    for download in (False, True):
        with pytest.raises(DataError) as error:
            load_source("fashion_mnist", root, 0.2, 0, 1, download)
        message = str(error.value)
        assert "\n" not in message
        assert "make quickstart-data" in message and "apt-get download dataset-fashion-mnist" in message
        assert "dpkg-deb -x" in message and str((root / "FashionMNIST" / "raw").resolve()) in message
