"""k-fold cross-validation: the folds (sources.py), the datamodule that trains on all but one of them
(data.py), and the report that counts folds as replicates and pairs strategies by fold (report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import data_config, make_image_folder, small
from tlbench.analysis import report
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.sources import DataError, LabelledItems, fold_of_each, split_by_fold
from tlbench.models.backbones import Preset
from tlbench.results.predictions import write_predictions
from tlbench.run.checks import ConfigError, check_config
from tlbench.run.train import compose_config, describe

RGB = Preset(
    mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize_size=36, crop_size=32, interpolation="bilinear"
)
# Three classes of 10, 7 and 5 items: no class divides evenly into 3 folds.
SPLIT = LabelledItems([f"img_{i:02d}" for i in range(22)], [0] * 10 + [1] * 7 + [2] * 5)


def test_folds_are_disjoint_and_cover_the_data():
    vals = []
    for fold in range(3):
        train, val = split_by_fold(SPLIT, fold_of_each(SPLIT, 3, 0), fold)
        assert set(train.items).isdisjoint(val.items)
        assert sorted(train.items + val.items) == SPLIT.items
        vals.append(set(val.items))
    assert set().union(*vals) == set(SPLIT.items)
    assert sum(map(len, vals)) == len(SPLIT)  # every item validates exactly once


def test_folds_are_stratified_and_even():
    assignment = np.array(fold_of_each(SPLIT, folds=3, seed=0))
    targets = np.array(SPLIT.targets)
    for label in range(3):
        counts = np.bincount(assignment[targets == label], minlength=3)
        assert counts.max() - counts.min() <= 1
    sizes = np.bincount(assignment, minlength=3)
    assert sizes.max() - sizes.min() <= 1


def test_folds_are_seeded():
    assert fold_of_each(SPLIT, 3, seed=1) == fold_of_each(SPLIT, 3, seed=1)
    assert fold_of_each(SPLIT, 3, seed=1) != fold_of_each(SPLIT, 3, seed=2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.folds=1"], r"data.folds must be null \(no cross-validation\) or a whole number ≥ 2, got 1"),
        (["data.folds=3", "data.fold=3"], r"data.fold must be between 0 and data.folds-1=2, got 3"),
        (["data.folds=3", "data.fold=-1"], "data.fold must be a whole number ≥ 0, got -1"),
        (["data.fold=2"], r"data.fold=2 needs data.folds"),
    ],
)
def test_bad_fold_settings_say_which_key(image_folder, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config([*small(image_folder), *overrides]))


def test_more_folds_than_images_of_a_class_says_lower_folds():
    with pytest.raises(DataError, match=r"data.folds=6 needs at least 6 images of every class; .*has 5"):
        split_by_fold(SPLIT, fold_of_each(SPLIT, 6, 0), 0)


def test_datamodule_validates_on_its_fold_and_saves_the_folds(tmp_path: Path):
    root = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_split={"train": 8, "val": 4})
    run_dir = tmp_path / "run"
    dm = ImageDataModule(data_config(root, num_workers=0, folds=3, fold=1), RGB, seed=4, run_dir=run_dir)
    dm.setup()
    splits = dm.data.splits
    saved = json.loads((run_dir / "folds.json").read_text())
    assert (saved["folds"], saved["fold"], saved["seed"]) == (3, 1, 4)
    assert len(saved["items"]) == 36  # train and val folders pooled
    in_fold = {item for item, f in zip(saved["items"], saved["fold_of_item"]) if f == 1}
    assert set(splits["val"].items) == in_fold
    assert set(splits["train"].items) == set(saved["items"]) - in_fold
    assert np.bincount(splits["val"].targets).tolist() == [4, 4, 4]
    # No test folder: the validation fold stands in for it, and says so.
    assert splits["test"].items == splits["val"].items and dm.data.test_split == "val"


def test_a_test_folder_stays_out_of_the_folds(tmp_path: Path):
    root = make_image_folder(tmp_path / "imgs", per_split={"train": 6, "val": 3, "test": 2})
    dm = ImageDataModule(data_config(root, num_workers=0, folds=3, fold=0), RGB, seed=0)
    assert dm.split_sizes() == {"train": 12, "val": 6, "test": 4}
    assert all("/test/" in item for item in dm.data.splits["test"].items)
    assert dm.data.test_split == "test"


def test_describe_names_the_fold_only_under_k_fold():
    assert {k: describe(compose_config([]))[k] for k in ("fold", "folds")} == {"fold": None, "folds": None}
    params = describe(compose_config(["data=imagefolder", "data.folds=5", "data.fold=2"]))
    assert (params["fold"], params["folds"]) == (2, 5)
    assert compose_config(["sweep=kfold"]).data.folds == 5


# ----------------------------------------------------------------------------------------------- report
TEST_ITEMS = [f"/data/test/{'a' if i % 2 else 'b'}/{i:03d}.jpg" for i in range(40)]


def write_fold_run(root: Path, strategy: str, fold: int, right: int) -> None:
    """A finished run of one fold whose predictions of the 40 test images get the first `right` right."""
    folder = root / f"data.fold={fold},strategy={strategy}"
    folder.mkdir(parents=True)
    params = {"data": "tiny", "backbone": "resnet18", "strategy": strategy, "seed": 0, "fold": fold}
    params |= {"folds": 3, "per_class": None}
    results = {
        "status": "complete",
        "params": params,
        "metrics": {"test/acc": right / 40},
        "classes": ["a", "b"],
        "wall_time_s": 10.0 + fold,
        "trainable_params": 1_000 if strategy == "freeze" else 9_000,
    }
    (folder / "results.json").write_text(json.dumps(results))
    targets = np.array([1 - i % 2 for i in range(40)])
    predicted = np.where(np.arange(40) < right, targets, 1 - targets)
    probs = np.full((40, 2), 0.1)
    probs[np.arange(40), predicted] = 0.9
    write_predictions(folder, TEST_ITEMS, probs, targets, ["a", "b"])


def test_report_counts_folds_as_replicates_and_pairs_by_fold(tmp_path: Path):
    # Folds differ a lot (30, 20, 10 right) but full is 2 images ahead of freeze on every one of them.
    for fold, right in enumerate([30, 20, 10]):
        write_fold_run(tmp_path, "freeze", fold, right)
        write_fold_run(tmp_path, "full", fold, right + 2)
    report.write_report(report.find_runs(tmp_path), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())

    assert [(g["strategy"], g["n"], g["seeds"]) for g in summary["groups"]] == [
        ("freeze", 3, [[0, 0], [0, 1], [0, 2]]),
        ("full", 3, [[0, 0], [0, 1], [0, 2]]),
    ]
    assert summary["groups"][0]["setting"] == {}  # the fold does not split a setting
    (comparison,) = summary["verdict"][0]["comparisons"]
    assert [comparison[k] for k in ("a", "b", "method")] == ["full", "freeze", "bootstrap (crossed)"]
    assert comparison["seeds"] == [[0, 0], [0, 1], [0, 2]]
    assert comparison["diff"] == pytest.approx(2 / 40)
    assert comparison["seed_sd"] == pytest.approx(0.0)  # paired by fold, the difference does not vary
    assert "paired by seed and fold" in (tmp_path / "summary.md").read_text()
