"""Classify images with a trained checkpoint — the seed notebooks' `predict(image_path)`, reusable — or,
zero-shot, with a pretrained backbone's own ImageNet classes; `--cam` also writes Grad-CAM overlays.

python -m tlbench.predict outputs/runs/<run>/checkpoints/best.ckpt photo1.jpg photo2.png --top-k 3
python -m tlbench.predict --backbone efficientnet_lite0 photo1.jpg photos/      # ImageNet names, no training
python -m tlbench.predict outputs/runs/<run>/checkpoints/best.ckpt photo1.jpg --cam cam/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from tlbench.backbones import WeightsUnavailableError, build_imagenet_classifier
from tlbench.data import eval_transform
from tlbench.images import BadImageError, read_image
from tlbench.module import TransferModule, decide
from tlbench.sources import IMAGE_EXTENSIONS


class ImageNetClassifier(nn.Module):
    """A pretrained backbone with its own ImageNet classifier as head, its class names taken from the
    weights' metadata: `predict` and Grad-CAM take it as they take a trained checkpoint."""

    def __init__(self, backbone: str, weights: str | None = "DEFAULT") -> None:
        super().__init__()
        built, self.class_names = build_imagenet_classifier(backbone, weights)
        self.net, self.stages, self.preset = built.net, built.stages, built.preset

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def load_model(checkpoint: str | Path, device: str = "cpu") -> TransferModule:
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found; runs keep theirs in <run>/checkpoints/")
    model = TransferModule.load_from_checkpoint(checkpoint, map_location=device, weights_only=True)
    return model.eval()


def load_zero_shot(backbone: str, weights: str | None = "DEFAULT", device: str = "cpu") -> ImageNetClassifier:
    """A pretrained backbone as published (offline: `efficientnet_lite0`), predicting ImageNet classes."""
    return ImageNetClassifier(backbone, weights).to(device).eval()


def load_images(model: nn.Module, paths: list[str | Path]) -> torch.Tensor:
    """The images as the model takes them: read, resized, centre-cropped and normalised by its preset."""
    transform = eval_transform(model.preset)
    in_chans = len(model.preset.mean)
    return torch.stack([transform(read_image(p, in_chans)) for p in paths])


@torch.no_grad()
def predict(
    model: nn.Module, paths: list[str | Path], top_k: int = 3, batch_size: int = 32
) -> list[list[tuple[str, float]]]:
    """For each image: the `top_k` (class name, probability) pairs, the predicted class first. `model` is a
    trained checkpoint (`load_model`) or a zero-shot ImageNet classifier (`load_zero_shot`)."""
    device = next(model.parameters()).device
    ranked = []
    for start in range(0, len(paths), batch_size):
        images = load_images(model, paths[start : start + batch_size])
        probabilities = model(images.to(device)).float().softmax(dim=1)
        indices = ranked_classes(model, probabilities)[:, :top_k]
        values = probabilities.gather(1, indices)
        ranked += [
            [(model.class_names[i], float(v)) for v, i in zip(row_values, row_indices)]
            for row_values, row_indices in zip(values.tolist(), indices.tolist())
        ]
    return ranked


def ranked_classes(model: nn.Module, probabilities: torch.Tensor) -> torch.Tensor:
    """Class indices of each row, the predicted class first: for a binary checkpoint its decision threshold
    (chosen on validation, saved in the checkpoint) decides, so the first class may be the less probable
    one; otherwise by probability."""
    if probabilities.shape[1] == 2:
        predicted = decide(
            probabilities, getattr(model, "threshold", None), getattr(model, "positive_class", 1)
        )
        return torch.stack([predicted, 1 - predicted], dim=1)
    return probabilities.argsort(dim=1, descending=True)


def write_cams(
    model: nn.Module, paths: list[str | Path], out_dir: str | Path, stage: str | None = None
) -> list[Path]:
    """Grad-CAM overlays for each image's predicted class, as `<out_dir>/<image name>_cam.png`; the target
    layer is the end of the last convolutional stage, or of `stage` (a name from the backbone's stages)."""
    from tlbench.cam import cam_overlay, grad_cam, target_layer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = load_images(model, paths).to(next(model.parameters()).device)
    _, layer = target_layer(model.net, model.stages, images.shape[1:], stage)
    written = []
    for path, image in zip(paths, images):
        heat_map = grad_cam(model.net, image[None], layer)[0]
        target = out_dir / f"{Path(path).stem}_cam.png"
        Image.fromarray(cam_overlay(image.cpu(), heat_map, model.preset.mean, model.preset.std)).save(target)
        written.append(target)
    return written


def expand_folders(inputs: list[str]) -> list[str]:
    """Image files as given; a folder stands for the image files under it, in sorted order."""
    paths = []
    for item in inputs:
        if Path(item).is_dir():
            found = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no image files under {item}")
            paths += [str(p) for p in found]
        else:
            paths.append(item)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a checkpoint then image files or folders; with --backbone, only images",
    )
    parser.add_argument(
        "--backbone", help="zero-shot: a pretrained backbone's ImageNet classes (no checkpoint)"
    )
    parser.add_argument(
        "--weights",
        default="DEFAULT",
        type=lambda tag: None if tag.lower() in ("null", "none") else tag,
        help="with --backbone: the weights tag (default: DEFAULT)",
    )
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument(
        "--cam", nargs="?", const="cam", metavar="DIR", help="write Grad-CAM overlays to DIR (default: cam/)"
    )
    parser.add_argument("--cam-stage", help="explain this stage's output (default: the last conv stage)")
    args = parser.parse_args(argv)
    if not args.backbone and len(args.inputs) < 2:
        parser.error("give a checkpoint and at least one image, or --backbone NAME and images")
    try:
        if args.backbone:
            model, images = load_zero_shot(args.backbone, args.weights), expand_folders(args.inputs)
        else:
            model, images = load_model(args.inputs[0]), expand_folders(args.inputs[1:])
        results = predict(model, images, args.top_k)
        cams = write_cams(model, images, args.cam, args.cam_stage) if args.cam else []
    except (FileNotFoundError, BadImageError, ValueError, ImportError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, ranked in zip(images, results):
        print(f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, p in ranked))
    if cams:
        print(f"Grad-CAM overlays: {len(cams)} in {args.cam}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
