"""Every run leaves its per-image test predictions beside results.json, and its calibration error."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from conftest import make_image_folder, small
from tlbench.results.predictions import PREDICTIONS_FILE, read_predictions, write_predictions
from tlbench.run.train import compose_config, train


def test_predictions_round_trip_with_paths_and_in_memory_items(tmp_path):
    probs = np.array([[0.75, 0.25], [0.125, 0.875], [0.5, 0.5]])
    items = ["/data/val/ants/a.jpg", ("test", 7), 3]
    write_predictions(tmp_path, items, probs, np.array([0, 0, 1]), ["ants", "bees"])

    lines = (tmp_path / PREDICTIONS_FILE).read_text().splitlines()
    assert lines[:2] == ["item,label,prob_ants,prob_bees", "/data/val/ants/a.jpg,ants,0.75,0.25"]
    read = read_predictions(tmp_path)
    assert read.items == ["/data/val/ants/a.jpg", "test:7", "3"]
    assert read.targets.tolist() == [0, 0, 1] and read.probs == pytest.approx(probs)
    assert read.correct.tolist() == [1.0, 0.0, 0.0]
    assert read.confidence == pytest.approx([0.75, 0.875, 0.5])


def test_a_partial_test_pass_writes_no_file(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        assert write_predictions(tmp_path, ["a", "b"], np.ones((1, 2)) / 2, np.zeros(1), ["x", "y"]) is None
    assert "1 predictions for 2 test images" in caplog.text
    assert read_predictions(tmp_path) is None


def test_a_run_saves_test_predictions_and_calibration_error(tmp_path):
    images = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4, "test": 4})
    cfg = compose_config([*small(images), "trainer.fast_dev_run=true", "logger=none"])
    results = train(cfg, tmp_path / "run")

    for key in ("test/ece", "val/ece"):
        assert 0.0 <= results["metrics"][key] <= 1.0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]["test/ece"] >= 0.0
    predictions = read_predictions(tmp_path / "run")
    assert predictions.classes == ["cat", "dog"] and len(predictions) == 8
    assert sorted(predictions.items) == sorted(str(p) for p in (images / "test").rglob("*.jpg"))
    assert [item.split("/")[-2] for item in predictions.items] == [
        predictions.classes[t] for t in predictions.targets
    ]
    assert predictions.probs.sum(axis=1) == pytest.approx(np.ones(8), abs=1e-5)
    assert predictions.correct.mean() == pytest.approx(results["metrics"]["test/acc"])
