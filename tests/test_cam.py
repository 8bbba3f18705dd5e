from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench.data.preset import Preset
from tlbench.models.backbones import build_backbone
from tlbench.models.module import TransferModule
from tlbench.serve.cam import cam_overlay, grad_cam, target_layer


def test_target_layer_is_the_end_of_the_last_convolutional_stage():
    resnet = build_backbone("resnet18", num_classes=2, weights=None)
    assert target_layer(resnet.net, resnet.stages, (3, 64, 64))[0] == "trunk.layer4"
    lite0 = build_backbone("efficientnet_lite0", num_classes=2, weights=None)
    assert target_layer(lite0.net, lite0.stages, (3, 64, 64))[0] == "trunk.bn2"
    # VGG's last stage before the head is its pretrained FC block: no feature map, so block5's last conv.
    vgg = build_backbone("vgg16", num_classes=2, weights=None)
    assert target_layer(vgg.net, vgg.stages, (3, 64, 64))[0] == "trunk.features.28"
    assert target_layer(resnet.net, resnet.stages, (3, 64, 64), stage="layer2")[0] == "trunk.layer2"
    with pytest.raises(ValueError, match="valid: stem, layer1"):
        target_layer(resnet.net, resnet.stages, (3, 64, 64), stage="layer9")


def test_grad_cam_gives_a_map_of_the_input_size_even_with_a_frozen_backbone():
    module = TransferModule(
        backbone={"name": "resnet18", "weights": None}, num_classes=3, in_chans=1, strategy={"name": "freeze"}
    ).eval()
    images = torch.randn(2, 1, 48, 64, generator=torch.Generator().manual_seed(0))
    _, layer = target_layer(module.net, module.stages, images.shape[1:])

    heat_maps = grad_cam(module.net, images, layer, classes=[0, 2])

    assert heat_maps.shape == (2, 48, 64)
    assert heat_maps.min() >= 0 and heat_maps.max() <= 1 and heat_maps.max() > 0


@pytest.mark.parametrize(
    ("size", "side"),
    [((40, 30), 320), ((600, 400), 350), ((4000, 3000), 1024)],  # upsampled, the crop's own, capped
)
def test_an_overlay_shows_the_original_crop_at_a_readable_size(size, side):
    # A 112-px crop (resize 128): the region the network saw, in the original's pixels, at 320-1024 px a side.
    preset = Preset((0.5,) * 3, (0.25,) * 3, resize_size=128, crop_size=112, interpolation="bilinear")
    original = Image.new("RGB", size, (200, 40, 40))
    heat_map = np.zeros((112, 112), dtype=np.float32)
    heat_map[:, 56:] = 1.0  # the right half drove the prediction
    overlay = cam_overlay(original, heat_map, preset)
    assert overlay.shape == (side, side, 3) and overlay.dtype == np.uint8
    left, right = overlay[side // 2, side // 8].astype(int), overlay[side // 2, -side // 8].astype(int)
    assert (left != right).any()  # the heat map is laid over, scaled with the image


def test_a_transformer_has_no_feature_map_to_explain():
    vit = build_backbone("vit_b_16", num_classes=2, weights=None)
    with pytest.raises(ValueError, match="needs a convolutional stage"):
        target_layer(vit.net, vit.stages, (3, 224, 224))
