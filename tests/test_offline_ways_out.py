"""Offline, the missing-weights error of each command names that command's own options (issue 18.6):
`predict --backbone` is told about predict's options, training about its overrides."""

from __future__ import annotations

import pickle

import pytest

from conftest import make_image_folder, small
from tlbench.models.weights import WeightsUnavailableError
from tlbench.serve.predict import load_zero_shot, main

TRAINING_OVERRIDES = ("backbone.checkpoint=", "backbone.weights=null")


@pytest.mark.parametrize("backbone", ["resnet18", "timm/resnet18"])
def test_predict_zero_shot_offline_names_predicts_own_options(offline, capsys, backbone):
    assert main(["--backbone", backbone, str(offline / "photo.jpg")]) == 1
    message = capsys.readouterr().err
    assert "--backbone efficientnet_lite0" in message and "checkpoints/best.ckpt IMAGES" in message
    assert not any(override in message for override in TRAINING_OVERRIDES)
    assert "Looked in:" in message  # where the weights would have to be, as before


def test_the_python_zero_shot_api_names_its_call(offline):
    with pytest.raises(WeightsUnavailableError) as error:
        load_zero_shot("resnet18")
    assert 'load_zero_shot("efficientnet_lite0")' in str(error.value)


def test_training_keeps_its_overrides_and_the_error_survives_a_launcher(offline, cli, tmp_path):
    images = make_image_folder(tmp_path / "images", per_split={"train": 2, "val": 2})
    run_dir = tmp_path / "run"
    ran = cli(*small(images, backbone="resnet18"), "backbone.weights=DEFAULT", f"hydra.run.dir={run_dir}")
    assert ran.returncode != 0
    shown = ran.stdout + ran.stderr
    assert all(override in shown for override in TRAINING_OVERRIDES) and "--backbone" not in shown
    error = WeightsUnavailableError("x", "https://example.org", ["/cache/x.pth"])
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # joblib/submitit pickle a job's error
