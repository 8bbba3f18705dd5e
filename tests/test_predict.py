from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import save_untrained_checkpoint, shared_data, write_images
from tlbench.data.images import read_image
from tlbench.data.preset import Preset
from tlbench.serve.predict import load_model, load_zero_shot, main, predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", ["cat", "dog", "owl"])


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


def test_cli_cam_writes_an_overlay_per_image_of_the_input_size(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "photos", (10, 200, 10), count=2)
    out = tmp_path / "cam"
    assert main([str(checkpoint), str(tmp_path / "photos"), "--cam", str(out)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # two images (a folder), one CAM line
    overlays = sorted(out.glob("*_cam.png"))
    assert [p.name for p in overlays] == ["img_000_cam.png", "img_001_cam.png"]
    with Image.open(overlays[0]) as png:
        # The 32-px crop the network saw, shown over the original's pixels at a readable 320 px.
        assert png.format == "PNG" and png.mode == "RGB" and png.size == (320, 320)


@pytest.mark.slow  # real images, ImageNet weights
def test_zero_shot_lite0_names_ants_and_bees_with_imagenet_classes():
    val = shared_data("hymenoptera/val")
    model = load_zero_shot("efficientnet_lite0")
    assert len(model.class_names) == 1000 and model.class_names[:2] == ["tench", "goldfish"]
    paths = {name: sorted((val / f"{name}s").glob("*.jpg"))[:20] for name in ("ant", "bee")}
    ranked = predict(model, [*paths["ant"], *paths["bee"]], top_k=1)
    top = [row[0][0] for row in ranked]
    expected = ["ant"] * len(paths["ant"]) + ["bee"] * len(paths["bee"])
    accuracy = sum(a == b for a, b in zip(top, expected)) / len(top)
    assert accuracy >= 0.7, list(zip(top, expected))


@pytest.mark.slow  # real images, ImageNet weights
def test_zero_shot_cli_needs_no_checkpoint_and_explains_with_cam(tmp_path, capsys):
    val = shared_data("hymenoptera/val")
    bee = sorted((val / "bees").glob("*.jpg"))[0]
    out = tmp_path / "cam"
    assert main(["--backbone", "efficientnet_lite0", str(bee), "--top-k", "2", "--cam", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{bee}: ") and first.count("%") == 2
    with Image.open(out / f"{bee.stem}_cam.png") as png, Image.open(bee) as photo:
        # Lite0's 224 crop of a 256 resize, in the photo's own pixels (at least 320 a side)
        assert png.size[0] == png.size[1] == max(320, round(min(photo.size) * 224 / 256))
    assert main(["--backbone", "efficientnet_lite0", str(bee), "--weights", "null"]) == 1
    assert "needs pretrained weights" in capsys.readouterr().err


def write_tiny_images(folder, count: int) -> list:
    """`count` 12×10 PNGs of varied grey: quick to write and to decode."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:04d}.png"
        Image.new("L", (12, 10), i % 256).save(path)
        paths.append(path)
    return paths


def test_a_big_folder_with_one_corrupt_file_is_predicted_and_the_file_reported(checkpoint, tmp_path, capsys):
    paths = write_tiny_images(tmp_path / "photos", 300)
    corrupt = tmp_path / "photos" / "img_0150_broken.png"
    corrupt.write_bytes(paths[0].read_bytes()[:40])
    assert main([str(checkpoint), str(tmp_path / "photos"), "--batch-size", "64", "--workers", "0"]) == 1
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 301
    assert [line.split(": ")[0] for line in lines] == sorted(map(str, [*paths, corrupt]))  # in folder order
    (bad,) = [line for line in lines if "%" not in line]
    assert bad.startswith(f"{corrupt}: unreadable (") and "Error" in bad
    assert "1 of 301 images could not be read" in err


def test_images_are_decoded_batch_by_batch_not_all_at_once(checkpoint, tmp_path, monkeypatch, capsys):
    """However many files: never more than one batch decoded and not yet through the network, Grad-CAM
    included. Counted on the reader and on the network's inputs."""
    import tlbench.serve.predict as predict_module

    write_tiny_images(tmp_path / "photos", 20)
    waiting, worst = [0], [0]

    def counting_read(path, in_chans=3):
        waiting[0] += 1
        worst[0] = max(worst[0], waiting[0])
        return read_image(path, in_chans)

    def counting_load(path, device="cpu"):
        model = load_model(path, device)
        model.net.register_forward_pre_hook(lambda _, args: waiting.__setitem__(0, waiting[0] - len(args[0])))
        return model

    monkeypatch.setattr(predict_module, "read_image", counting_read)
    monkeypatch.setattr(predict_module, "load_model", counting_load)
    argv = [str(checkpoint), str(tmp_path / "photos"), "--batch-size", "4", "--workers", "0"]
    assert main([*argv, "--cam", str(tmp_path / "cam")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 21  # 20 images, one CAM line
    assert worst[0] <= 4


def test_predict_each_yields_rows_before_the_folder_is_read(checkpoint, tmp_path, monkeypatch):
    import tlbench.serve.predict as predict_module

    paths = write_tiny_images(tmp_path / "photos", 50)
    reads = []
    monkeypatch.setattr(predict_module, "read_image", lambda p, c=3: reads.append(p) or read_image(p, c))
    rows = predict_module.predict_each(load_model(checkpoint), paths, batch_size=8)
    first = next(rows)
    assert first.path == str(paths[0]) and first.error is None and len(reads) == 8
    assert len(list(rows)) == 49
