"""Classify images with a trained checkpoint — the seed notebooks' `predict(image_path)`, reusable — or,
zero-shot, with a pretrained backbone's own ImageNet classes; `--cam` also writes Grad-CAM overlays.

python -m tlbench.predict outputs/runs/<run>/checkpoints/best.ckpt photo1.jpg photo2.png --top-k 3
python -m tlbench.predict --backbone efficientnet_lite0 photo1.jpg photos/      # ImageNet names, no training
python -m tlbench.predict outputs/runs/<run>/checkpoints/best.ckpt photos/ --batch-size 64 > predictions.txt

A folder of any size is read and predicted batch by batch (bounded memory, a progress bar on stderr), one
line per image as it goes; an unreadable image gets a line saying why, the others are still predicted, and
the exit status is 1 when any image (or the checkpoint) could not be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tlbench.data.images import BadImageError, read_image
from tlbench.data.preset import Preset, eval_transform
from tlbench.data.sources import IMAGE_EXTENSIONS, image_files
from tlbench.models.backbones import build_imagenet_classifier
from tlbench.models.decision import decide
from tlbench.models.module import TransferModule
from tlbench.models.weights import ZERO_SHOT_WAYS_OUT, WeightsUnavailableError
from tlbench.serve.export import check_writable_folder, load_checkpoint


class ImageNetClassifier(nn.Module):
    """A pretrained backbone with its own ImageNet classifier and class names, used as a checkpoint is."""

    def __init__(self, backbone: str, weights: str | None = "DEFAULT") -> None:
        super().__init__()
        try:
            built, self.class_names = build_imagenet_classifier(backbone, weights)
        except WeightsUnavailableError as error:
            raise error.for_command(ZERO_SHOT_WAYS_OUT) from None
        self.net, self.stages, self.preset = built.net, built.stages, built.preset

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def load_model(checkpoint: str | Path, device: str = "cpu") -> TransferModule:
    """A trained checkpoint in eval mode; one line naming the file when it cannot be loaded."""
    return load_checkpoint(checkpoint).to(device)


def load_zero_shot(backbone: str, weights: str | None = "DEFAULT", device: str = "cpu") -> ImageNetClassifier:
    """A pretrained backbone as published (offline: `efficientnet_lite0`), predicting ImageNet classes."""
    return ImageNetClassifier(backbone, weights).to(device).eval()


class ImageFiles(Dataset):
    """Image files as the model takes them; an unreadable one becomes its reason, so the others go on."""

    def __init__(self, paths: list[str | Path], preset: Preset):
        self.paths, self.transform, self.in_chans = list(paths), eval_transform(preset), len(preset.mean)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | str:
        try:
            return self.transform(read_image(self.paths[index], self.in_chans))
        except BadImageError as error:
            cause = error.__cause__ or error
            return f"{type(cause).__name__}: {cause}"


def keep_reasons(batch: list[torch.Tensor | str]) -> tuple[torch.Tensor | None, list[torch.Tensor | str]]:
    """DataLoader collate: the readable images stacked, and the batch as it came (reasons in place)."""
    images = [item for item in batch if isinstance(item, torch.Tensor)]
    return (torch.stack(images) if images else None), batch


def image_batches(
    paths: list[str | Path], preset: Preset, batch_size: int = 32, num_workers: int = 0
) -> DataLoader:
    """Batches decoded as they are needed: memory holds `batch_size` × (1 + prefetching workers) images."""
    return DataLoader(
        ImageFiles(paths, preset), batch_size=batch_size, num_workers=num_workers, collate_fn=keep_reasons
    )


def load_images(model: nn.Module, paths: list[str | Path]) -> torch.Tensor:
    """The images as the model takes them: read, resized, centre-cropped and normalised by its preset."""
    transform = eval_transform(model.preset)
    in_chans = len(model.preset.mean)
    return torch.stack([transform(read_image(p, in_chans)) for p in paths])


@dataclass
class Prediction:
    """One image's outcome: its class probabilities, or why it could not be read."""

    path: str
    probabilities: torch.Tensor | None
    error: str | None = None

    def ranked(self, model: nn.Module, top_k: int) -> list[tuple[str, float]]:
        """The `top_k` (class name, probability) pairs, the predicted class first (see ranked_classes)."""
        indices = ranked_classes(model, self.probabilities[None])[0, :top_k].tolist()
        return [(model.class_names[i], float(self.probabilities[i])) for i in indices]


@torch.no_grad()
def predict_each(
    model: nn.Module, paths: list[str | Path], batch_size: int = 32, num_workers: int = 0
) -> Iterator[Prediction]:
    """One Prediction per path, in order, yielded batch by batch (bounded memory, written as it goes)."""
    device = next(model.parameters()).device
    paths = [str(p) for p in paths]
    done = 0
    for images, batch in image_batches(paths, model.preset, batch_size, num_workers):
        probabilities = iter(
            model(images.to(device)).float().softmax(dim=1).cpu() if images is not None else []
        )
        for item in batch:
            if isinstance(item, str):
                yield Prediction(paths[done], None, item)
            else:
                yield Prediction(paths[done], next(probabilities))
            done += 1


def predict(
    model: nn.Module, paths: list[str | Path], top_k: int = 3, batch_size: int = 32
) -> list[list[tuple[str, float]]]:
    """Each image's `top_k` (class name, probability) pairs; an unreadable image raises BadImageError."""
    ranked = []
    for prediction in predict_each(model, paths, batch_size):
        if prediction.error is not None:
            raise BadImageError(f"{prediction.path}: {prediction.error}")
        ranked.append(prediction.ranked(model, top_k))
    return ranked


def ranked_classes(model: nn.Module, probabilities: torch.Tensor) -> torch.Tensor:
    """Class indices of each row, the predicted first (binary: by the saved threshold, else probability)."""
    if probabilities.shape[1] == 2:
        threshold, positive = getattr(model, "threshold", None), getattr(model, "positive_class", 1)
        predicted = decide(probabilities, threshold, positive)
        return torch.stack([predicted, 1 - predicted], dim=1)
    return probabilities.argsort(dim=1, descending=True)


def write_cams(
    model: nn.Module, paths: list[str | Path], out_dir: str | Path, stage: str | None = None
) -> list[Path]:
    """Grad-CAM overlays of each image's predicted class as `<out_dir>/<image name>_cam.png`."""
    from tlbench.serve.cam import cam_overlay, grad_cam, target_layer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    layer, written = None, []
    transform, in_chans = eval_transform(model.preset), len(model.preset.mean)
    for path in paths:
        original = read_image(path, in_chans)  # read once: the network's input, and what the overlay shows
        image = transform(original).to(device)
        if layer is None:
            _, layer = target_layer(model.net, model.stages, image.shape, stage)
        heat_map = grad_cam(model.net, image[None], layer)[0]
        target = out_dir / f"{Path(path).stem}_cam.png"
        Image.fromarray(cam_overlay(original, heat_map, model.preset)).save(target)
        written.append(target)
    return written


def expand_folders(inputs: list[str]) -> list[str]:
    """Image files as given; a folder stands for the image files under it, in sorted order, without hidden
    files and folders (.ipynb_checkpoints/, __MACOSX/, ._x.jpg: as training leaves them out)."""
    paths = []
    for item in inputs:
        if Path(item).is_dir():
            found = image_files(item)
            if not found:
                looked = ", ".join(IMAGE_EXTENSIONS)
                raise FileNotFoundError(f"no image files under {item} (looked for {looked}; not hidden ones)")
            paths += [str(p) for p in found]
        else:
            paths.append(item)
    return paths


def whole_number(minimum: int):
    """An argparse type: a whole number ≥ `minimum`, else argparse's usage error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number ≥ {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


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
    parser.add_argument(
        "--top-k", type=whole_number(1), default=3, help="classes shown per image (default: 3; at most all)"
    )
    parser.add_argument(
        "--batch-size",
        type=whole_number(1),
        default=32,
        help="images decoded and predicted at once (default: 32)",
    )
    parser.add_argument(
        "--workers",
        type=whole_number(0),
        default=min(4, os.cpu_count() or 1),
        help="processes that decode images (0: in this process)",
    )
    parser.add_argument(
        "--cam", nargs="?", const="cam", metavar="DIR", help="write Grad-CAM overlays to DIR (default: cam/)"
    )
    parser.add_argument("--cam-stage", help="explain this stage's output (default: the last conv stage)")
    args = parser.parse_args(argv)
    if not args.backbone and len(args.inputs) < 2:
        parser.error("give a checkpoint and at least one image, or --backbone NAME and images")
    try:
        if args.cam:
            check_writable_folder(Path(args.cam), "--cam")
        if args.backbone:
            model, images = load_zero_shot(args.backbone, args.weights), expand_folders(args.inputs)
        else:
            model, images = load_model(args.inputs[0]), expand_folders(args.inputs[1:])
        top_k = min(args.top_k, len(model.class_names))
        if top_k < args.top_k:
            print(f"note: --top-k {args.top_k} is more than the model's {top_k} classes; showing all {top_k}",
                  file=sys.stderr)  # fmt: skip
        failed = print_predictions(model, images, top_k, args.batch_size, args.workers)
        readable = [path for path in images if path not in failed]
        cams = write_cams(model, readable, args.cam, args.cam_stage) if args.cam else []
    except (FileNotFoundError, BadImageError, ValueError, ImportError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if cams:
        print(f"Grad-CAM overlays: {len(cams)} in {args.cam}/")
    if failed:
        named = ", ".join(sorted(failed)[:3]) + (", …" if len(failed) > 3 else "")
        print(
            f"error: {len(failed)} of {len(images)} images could not be read ({named}); their lines say why",
            file=sys.stderr,
        )
        return 1
    return 0


def print_predictions(
    model: nn.Module, paths: list[str], top_k: int, batch_size: int, workers: int
) -> set[str]:
    """One line per image as it is predicted, under a progress bar; returns the unreadable paths."""
    failed = set()
    # Two classes: the answer comes from the saved threshold, not the larger probability; each line says so.
    decision = getattr(model, "binary_decision", None)
    rows = predict_each(model, paths, batch_size, workers)
    for prediction in tqdm(rows, total=len(paths), unit="image", file=sys.stderr, disable=None):
        if prediction.error is not None:
            failed.add(prediction.path)
            tqdm.write(f"{prediction.path}: unreadable ({prediction.error})")
        else:
            ranked = ", ".join(f"{name} {p:.1%}" for name, p in prediction.ranked(model, top_k))
            why = f"{decision.explain(prediction.probabilities)}: " if decision is not None else ""
            tqdm.write(f"{prediction.path}: {why}{ranked}")
    return failed
