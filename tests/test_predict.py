from __future__ import annotations

import lightning as L
import pytest
import torch

from conftest import write_images
from tlbench.backbones import Preset
from tlbench.module import TransferModule
from tlbench.predict import load_model, main, predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    preset = {"mean": [0.5], "std": [0.25], "resize_size": 40, "crop_size": 32, "interpolation": "bilinear"}
    model = TransferModule(
        backbone={"name": "resnet18", "weights": None},
        num_classes=3,
        in_chans=1,
        class_names=["cat", "dog", "owl"],
        preset=preset,
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_predict_ranks_class_names_with_probabilities(checkpoint, tmp_path):
    paths = write_images(tmp_path, (200, 10, 10), count=2)
    model = load_model(checkpoint)
    assert model.preset == Preset(
        mean=(0.5,), std=(0.25,), resize_size=40, crop_size=32, interpolation="bilinear"
    )
    ranked = predict(model, paths, top_k=3)
    assert len(ranked) == 2
    for row in ranked:
        names, probabilities = zip(*row)
        assert sorted(names) == ["cat", "dog", "owl"]
        assert list(probabilities) == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        assert model.net.trunk.conv1.in_channels == 1


def test_cli_prints_one_line_per_image_and_fails_clearly(checkpoint, tmp_path, capsys):
    paths = write_images(tmp_path, (10, 200, 10), count=2)
    assert main([str(checkpoint), *map(str, paths), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("%" in line for line in lines)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert main([str(checkpoint), str(tmp_path / "broken.jpg")]) == 1
    assert "broken.jpg" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.ckpt"), str(paths[0])]) == 1
