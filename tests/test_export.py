from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime
import pytest
import torch

from conftest import save_untrained_checkpoint
from tlbench.serve.export import export, load_checkpoint, main, serving_metadata


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-init resnet18 for 1-channel images, 2 classes, saved the way a run saves it."""
    return save_untrained_checkpoint(tmp_path_factory.mktemp("run") / "best.ckpt", ["normal", "pneumonia"])


def reference_logits(checkpoint, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_checkpoint(checkpoint).net(images)


def test_onnx_round_trip_matches_the_checkpoint_with_what_serving_needs_beside_it(checkpoint, tmp_path):
    model_file, metadata_file = export(checkpoint, "onnx", tmp_path / "model.onnx")
    assert metadata_file == tmp_path / "model.onnx.json"
    images = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # batch is dynamic

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})

    np.testing.assert_allclose(logits, reference_logits(checkpoint, images).numpy(), atol=1e-4)
    metadata = json.loads(metadata_file.read_text())
    assert metadata["class_names"] == ["normal", "pneumonia"]
    assert metadata["in_chans"] == 1 and metadata["input_size"] == [32, 32]
    assert metadata["mean"] == [0.5] and metadata["std"] == [0.25]
    assert metadata["interpolation"] == "bilinear" and metadata["resize_size"] == 40
    assert metadata["positive_class"] == 1 and "threshold" not in metadata
    assert metadata["model_file"] == "model.onnx" and metadata["input"]["name"] == "images"


def test_torchscript_round_trip_matches_the_checkpoint(checkpoint):
    model_file, metadata_file = export(checkpoint, "torchscript")
    assert model_file == checkpoint.with_suffix(".pt") and metadata_file.name == "best.pt.json"
    images = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is marked deprecated
        scripted = torch.jit.load(str(model_file))
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), reference_logits(checkpoint, images), atol=1e-4, rtol=0)
    assert json.loads(metadata_file.read_text())["format"] == "torchscript"


def test_a_binary_threshold_in_the_checkpoint_travels_with_the_export(checkpoint):
    module = load_checkpoint(checkpoint)
    module.hparams["threshold"] = 0.3
    assert serving_metadata(module, "onnx", "model.onnx")["threshold"] == 0.3


def test_cli_writes_both_files_and_fails_in_one_line_on_a_bad_checkpoint(checkpoint, tmp_path, capsys):
    assert main([str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.onnx.json").is_file()
    capsys.readouterr()

    assert main([str(tmp_path / "missing.ckpt")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "missing.ckpt not found" in error

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(checkpoint.read_bytes()[:5000])
    assert main([str(corrupt), "--format", "torchscript"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "corrupt.ckpt is not a readable tlbench checkpoint" in error
