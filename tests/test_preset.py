"""The preset's one resize-and-centre-crop: the streaming path, prediction, decode-once and the device
copy all show the network the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench.data.augment import EvalPreprocess
from tlbench.data.decode import decode_to_uint8, resize_center_crop_uint8
from tlbench.data.preset import Preset, eval_transform

PRESET = Preset((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), resize_size=36, crop_size=32, interpolation="bilinear")


def write_images(folder, sizes: list[tuple[int, int]]) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (width, height) in enumerate(sizes):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_decode_once_shows_the_network_what_streaming_and_predict_show(tmp_path, interpolation):
    preset = Preset(PRESET.mean, PRESET.std, 36, 32, interpolation)
    # wide, tall, square, already the resize size: every branch of "shorter side" and "no resize needed"
    paths = write_images(tmp_path, [(50, 40), (37, 61), (45, 45), (36, 36)])
    streamed = torch.stack([eval_transform(preset)(Image.open(p).convert("RGB")) for p in paths])
    decoded = decode_to_uint8(paths, 36, 3, crop_size=32, interpolation=interpolation).images
    assert torch.allclose(EvalPreprocess(preset.mean, preset.std)(decoded), streamed, atol=1e-6)


def test_the_device_copy_of_same_sized_images_is_the_decoded_one_within_a_grey_level(tmp_path):
    paths = write_images(tmp_path, [(40, 40)] * 3)
    native = decode_to_uint8(paths, 40).images
    on_device = resize_center_crop_uint8(native, 36, 32, chunk=2)  # chunked as a large split would be
    with_pil = decode_to_uint8(paths, 36, 3, crop_size=32).images
    assert on_device.shape == with_pil.shape == (3, 3, 32, 32) and on_device.dtype == torch.uint8
    assert (on_device.int() - with_pil.int()).abs().max() <= 1
