"""Train augmentation for a whole uint8 batch on its device: RandomResizedCrop, flip, a policy, normalise.
Each sample's crop and flip come from the batch's generator (seeded per epoch): no Python loop, and a
resumed run draws what the uninterrupted one drew."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for n images at once: (n, 4) whole-pixel boxes
    (top, left, h, w); the first of `attempts` draws that fits, else a centre crop with the aspect clamped."""
    area = height * width
    u = torch.rand((n, attempts, 4), generator=generator, device=device, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    top = torch.floor(u[..., 2].gather(1, first).squeeze(1) * (height - h + 1))
    left = torch.floor(u[..., 3].gather(1, first).squeeze(1) * (width - w + 1))

    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(height * max(ratio))), height
    else:
        fb_w, fb_h = width, height
    # Python scalars, not a tensor: building one on the GPU would be a host-to-device copy every batch.
    ok = fits.any(dim=1)
    fallback = ((height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w)
    boxes = [torch.where(ok, v, float(fb)) for v, fb in zip((top, left, h, w), fallback, strict=True)]
    return torch.stack(boxes, dim=1).float()


def _sample_coords(
    start: torch.Tensor, length: torch.Tensor, size: int, extent: int, clamp: bool
) -> torch.Tensor:
    """(n, size) grid_sample coordinates across [start, start+length) of an `extent` axis, at half-pixel
    centres (as torchvision and PIL resize); `clamp` keeps them inside the crop, as resizing a crop does."""
    k = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    src = start[:, None] + k * (length / size)[:, None] - 0.5
    if clamp:
        src = torch.minimum(torch.maximum(src, start[:, None]), (start + length - 1)[:, None])
    return (2 * src + 1) / extent - 1


def resized_crop(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flip: torch.Tensor | None = None,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w), resize it to size×size (float32), mirror where `flip`.

    Bilinear equals torchvision's resized_crop(antialias=False); bicubic differs only next to the crop's
    edge. No antialiasing: images stored at the preset's resize_size shrink by at most 256/224."""
    n, chans, height, width = images.shape
    top, left, h, w = boxes.to(images.device, torch.float32).unbind(1)
    clamp = interpolation != "bicubic"
    x = _sample_coords(left, w, size, width, clamp)
    if flip is not None:
        x = torch.where(flip[:, None], x.flip(1), x)
    y = _sample_coords(top, h, size, height, clamp)
    grid = torch.stack([x[:, None, :].expand(n, size, size), y[:, :, None].expand(n, size, size)], dim=-1)
    out = F.grid_sample(images.float(), grid, mode=interpolation, padding_mode="border", align_corners=False)
    if interpolation == "bicubic" and images.dtype == torch.uint8:
        out = out.clamp_(0, 255)
    return out


class Normalize:
    """uint8 or [0,255] float (N, C, H, W) -> (x/255 - mean)/std, optionally channels_last and cast."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        self.mean, self.std = tuple(mean), tuple(std)
        self.dtype, self.channels_last = dtype, channels_last
        self._coeffs: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _scale_shift(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._coeffs:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self._coeffs[device] = (1.0 / (255.0 * std), -mean / std)
        return self._coeffs[device]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # `generator` is unused: normalising draws nothing; it keeps one signature for every transform.
        scale, shift = self._scale_shift(x.device)
        out = torch.addcmul(shift, x.float(), scale)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out.to(self.dtype)


class EvalPreprocess(Normalize):
    """Eval images are cropped when decoded (decode_to_uint8 with crop_size), so only normalising is left."""


class GpuAugment:
    """RandomResizedCrop + RandomHorizontalFlip (+ a policy) + Normalize for a uint8 batch, on its device.

    `policy` (data.augment: TrivialAugmentWide or RandAugment) runs on each cropped image by itself — a v2
    policy given a batch would apply one operation to all of it — with torch's RNG seeded from the batch's
    generator, so it is as reproducible as the crops."""

    def __init__(
        self,
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        interpolation: str = "bilinear",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        policy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.crop_size, self.policy, self.interpolation = crop_size, policy, interpolation
        self.scale, self.ratio, self.hflip = scale, ratio, hflip
        self.normalize = Normalize(mean, std, dtype=dtype, channels_last=channels_last)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(n, height, width, self.scale, self.ratio, generator, images.device)
        flip = torch.rand(n, generator=generator, device=images.device) < 0.5 if self.hflip else None
        cropped = resized_crop(images, boxes, self.crop_size, flip, self.interpolation)
        if self.policy is not None:
            cropped = self.apply_policy(cropped, generator)
        return self.normalize(cropped)

    def apply_policy(self, cropped: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,), generator=generator, device=cropped.device))
        images = cropped.round_().clamp_(0, 255).to(torch.uint8)
        with torch.random.fork_rng(devices=[]):  # the policies draw their choices on the CPU
            torch.manual_seed(seed)
            return torch.stack([self.policy(image) for image in images])
