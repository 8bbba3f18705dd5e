"""data.per_class (and data.val_per_class) larger than a class: the run uses all that class has, says so
once naming the class and the count, and results.json records what was trained on per class."""

from __future__ import annotations

import logging
from pathlib import Path

from conftest import CLASS_COLOURS, data_config, small, write_images
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.preset import Preset
from tlbench.run.train import compose_config, train

PRESET = Preset((0.5,) * 3, (0.25,) * 3, resize_size=40, crop_size=32, interpolation="bilinear")


def uneven_folder(root: Path) -> Path:
    """cat: 8 train / 4 val images, dog: 3 train / 1 val, bird: 6 / 2."""
    for c, (name, n_train, n_val) in enumerate([("bird", 6, 2), ("cat", 8, 4), ("dog", 3, 1)]):
        write_images(root / "train" / name, CLASS_COLOURS[c], n_train, seed=c)
        write_images(root / "val" / name, CLASS_COLOURS[c], n_val, seed=10 + c)
    return root


def shortfall_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "more than" in r.getMessage()]


def test_per_class_above_a_class_warns_once_naming_it(tmp_path, caplog):
    root = uneven_folder(tmp_path / "images")
    config = data_config(
        root, per_class=5, val_per_class=2, num_workers=0, cache_dir=None, pipeline="streaming"
    )
    module = ImageDataModule(config, PRESET, seed=0)
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        module.setup()
    train_counts = module.labels("train").bincount().tolist()
    assert train_counts == [5, 5, 3] and module.labels("val").bincount().tolist() == [2, 2, 1]
    messages = shortfall_warnings(caplog)
    assert len(messages) == 2, messages  # one for train (data.per_class), one for val (data.val_per_class)
    train_line, val_line = messages
    assert "data.per_class=5" in train_line and "dog: 3" in train_line
    assert "cat" not in train_line and "bird" not in train_line
    assert "data.val_per_class=2" in val_line and "dog: 1" in val_line
    assert all("\n" not in m for m in messages)


def test_per_class_within_every_class_is_silent(tmp_path, caplog):
    root = uneven_folder(tmp_path / "images")
    config = data_config(root, per_class=3, num_workers=0, cache_dir=None, pipeline="streaming")
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        ImageDataModule(config, PRESET, seed=0).setup()
    assert shortfall_warnings(caplog) == []


def test_results_record_the_images_used_per_class(tmp_path, caplog):
    root = uneven_folder(tmp_path / "images")
    overrides = [*small(root), "logger=none", "trainer.max_epochs=1", "data.per_class=5"]
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        results = train(compose_config(overrides), tmp_path / "run")
    assert results["params"]["per_class"] == 5  # what was asked: the report groups by it
    assert results["train_per_class"] == {"bird": 5, "cat": 5, "dog": 3}  # what was used
    assert results["split_sizes"]["train"] == 13
    assert len(shortfall_warnings(caplog)) == 1
