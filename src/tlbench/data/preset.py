"""The preset: how a backbone's pretrained weights want their images, and the transforms that make them so.

A `Preset` is read once from the weights' metadata (models/backbones.get_preset) and is the only source of
mean/std, sizes and interpolation wherever an image is prepared. Only torch and torchvision here, so
serving a checkpoint imports this without the data pipelines or timm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

# ITU-R 601-2 luma weights: what PIL's convert("L") uses, so grayscale statistics match grayscale images.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# data.augment: what each training image goes through after its random crop and flip. The policies are
# torchvision's, with bilinear geometry (tensor rotations and shears support nearest and bilinear only).
AUGMENT_POLICIES = {
    "crop_flip": None,
    "trivialaugment": lambda: T.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR),
    "randaugment": lambda: T.RandAugment(interpolation=InterpolationMode.BILINEAR),
}


@dataclass(frozen=True)
class Preset:
    """The one source of truth for input preprocessing."""

    mean: tuple[float, ...]  # len == in_chans (1 or 3)
    std: tuple[float, ...]
    resize_size: int  # eval: resize shorter side to this ...
    crop_size: int  # ... then centre-crop to this; train: RandomResizedCrop(crop_size)
    interpolation: str  # "bilinear" | "bicubic" | "nearest"


IMAGENET_PRESET = Preset((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 256, 224, "bilinear")


def to_gray(rgb: Preset) -> Preset:
    """The preset for 1-channel input: RGB statistics weighted as the grayscale conversion weighs colours."""

    def luma(values: tuple[float, ...]) -> tuple[float]:
        # rounded so that mean=std=0.5 stays 0.5, not 0.49999999999999994
        return (round(sum(w * v for w, v in zip(LUMA_WEIGHTS, values, strict=True)), 6),)

    return Preset(luma(rgb.mean), luma(rgb.std), rgb.resize_size, rgb.crop_size, rgb.interpolation)


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name.lower())
    except ValueError as error:
        valid = ", ".join(m.value for m in InterpolationMode)
        raise ValueError(f"unknown interpolation {name!r}; choose one of: {valid}") from error


def resize_center_crop(resize_size: int, crop_size: int, interpolation: str = "bilinear") -> T.Compose:
    """Eval geometry for PIL images and device uint8 batches; bicubic: a=-0.75 on tensors, -0.5 in PIL."""
    resize = T.Resize(resize_size, interpolation=interpolation_mode(interpolation), antialias=True)
    return T.Compose([resize, T.CenterCrop(crop_size)])


def to_normalized_tensor(preset: Preset) -> list[T.Transform]:
    return [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(preset.mean), list(preset.std)),
    ]


def eval_transform(preset: Preset) -> T.Compose:
    """A PIL image → the normalised (C, crop, crop) tensor the network takes at eval and prediction."""
    crop = resize_center_crop(preset.resize_size, preset.crop_size, preset.interpolation)
    return T.Compose([crop, *to_normalized_tensor(preset)])


def augment_policy(name: str) -> T.Transform | None:
    """data.augment → the torchvision policy (None for crop_flip); colour operations skip 1 channel."""
    make = AUGMENT_POLICIES[name]
    return make() if make is not None else None


def train_transform(
    preset: Preset,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    augment: str = "crop_flip",
) -> T.Compose:
    interpolation = interpolation_mode(preset.interpolation)
    crop = T.RandomResizedCrop(
        preset.crop_size, scale=tuple(crop_scale), interpolation=interpolation, antialias=True
    )
    flip = [T.RandomHorizontalFlip()] if hflip else []
    policy = augment_policy(augment)
    return T.Compose([crop, *flip, *([policy] if policy else []), *to_normalized_tensor(preset)])


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised (B, C, H, W) images back to [0, 1], on the CPU: what a person would have seen."""
    images = images.detach().float().cpu()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)
