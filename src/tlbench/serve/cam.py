"""Grad-CAM heat maps: which part of an image drove a prediction (the `grad-cam` package does the maths).
The target: the last stage whose output is still a feature map, at its last module (resnet `layer4`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from tlbench.data.preset import Preset

__all__ = ["cam_overlay", "grad_cam", "target_layer"]

# An overlay's side in pixels: a network's crop (32 to 224 px) is too small to read on a screen, and a photo's
# full resolution makes a PNG of megabytes.
OVERLAY_MIN_SIDE, OVERLAY_MAX_SIDE = 320, 1024

_INSTALL_HINT = "pip install grad-cam (or pip install 'tlbench[cam]')"


def target_layer(
    net: nn.Module, stages: list[tuple[str, list[str]]], input_shape: Sequence[int], stage: str | None = None
) -> tuple[str, nn.Module]:
    """(name, module) to explain: `stage`'s last module, or the last stage whose output is a feature map
    (module docstring); `input_shape` is one image's (C, H, W)."""
    names = [name for name, _ in stages if name != "head"]
    if stage is not None and stage not in names:
        raise ValueError(f"unknown stage {stage!r} for Grad-CAM; valid: {', '.join(names)}")
    modules = dict(net.named_modules())
    candidates = {
        name: [prefix for prefix in prefixes if prefix in modules][-1]  # a prefix may name a parameter
        for name, prefixes in stages
        if name in ([stage] if stage else names) and any(prefix in modules for prefix in prefixes)
    }
    shapes = _output_shapes(net, list(candidates.values()), input_shape)
    looked_at = []
    for name in reversed(list(candidates)):
        looked_at.append(name)
        dims = len(shapes.get(candidates[name], ()))
        if dims == 4:
            return candidates[name], net.get_submodule(candidates[name])
        if dims != 2:  # pooled features (VGG's FC block) are passed over; tokens (B, N, D) are not
            break
    raise ValueError(
        f"stage(s) {looked_at} output no feature map (B, C, H, W): Grad-CAM needs a convolutional stage "
        "at the end of the backbone (a vision transformer's tokens are not one)"
    )


@torch.no_grad()
def _output_shapes(net: nn.Module, module_names: list[str], input_shape: Sequence[int]) -> dict:
    shapes: dict[str, tuple[int, ...]] = {}

    def keep_shape(name: str):
        def hook(module, inputs, output) -> None:
            shapes[name] = tuple(getattr(output, "shape", ()))

        return hook

    handles = [net.get_submodule(name).register_forward_hook(keep_shape(name)) for name in module_names]
    was_training = net.training
    try:
        net.eval()  # a probe must not move BatchNorm statistics
        net(torch.zeros(1, *input_shape, device=next(net.parameters()).device))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def grad_cam(
    net: nn.Module, images: torch.Tensor, layer: nn.Module, classes: Sequence[int] | None = None
) -> np.ndarray:
    """(B, H, W) heat maps in [0, 1] of normalised `images`, for `classes` (default: the predicted ones)."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        raise ImportError(f"Grad-CAM comes from a pip package: {_INSTALL_HINT}") from err
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    # Frozen stages have no gradients of their own: asking for the input's makes the activations' flow.
    inputs = images.detach().clone().requires_grad_(True)
    with GradCAM(model=net.eval(), target_layers=[layer]) as cam:
        return cam(input_tensor=inputs, targets=targets)


def cam_overlay(original: Image.Image, heat_map: np.ndarray, preset: Preset) -> np.ndarray:
    """The heat map laid over the original image's pixels where the network looked (the preset's resize and
    centre crop, mapped back to the original), at a readable size: that region's own resolution, between
    OVERLAY_MIN_SIDE and OVERLAY_MAX_SIDE pixels a side. uint8 (side, side, 3), ready to save."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    width, height = original.size
    side = preset.crop_size * min(width, height) / preset.resize_size  # the crop, in original pixels
    left, top = (width - side) / 2, (height - side) / 2
    out = int(min(max(round(side), OVERLAY_MIN_SIDE), OVERLAY_MAX_SIDE))
    box = (round(left), round(top), round(left + side), round(top + side))
    region = original.convert("RGB").crop(box).resize((out, out), Image.Resampling.BICUBIC)
    heat = Image.fromarray(np.asarray(heat_map, dtype=np.float32))
    heat = heat.resize((out, out), Image.Resampling.BILINEAR)
    rgb = np.asarray(region, dtype=np.float32) / 255.0
    return show_cam_on_image(rgb, np.clip(np.asarray(heat), 0.0, 1.0), use_rgb=True)
