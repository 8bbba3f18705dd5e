"""Classify images with a trained checkpoint — the seed notebooks' `predict(image_path)`, reusable.

python -m tlbench.predict outputs/runs/<run>/checkpoints/best.ckpt photo1.jpg photo2.png --top-k 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tlbench.data import eval_transform
from tlbench.images import BadImageError, read_image
from tlbench.module import TransferModule


def load_model(checkpoint: str | Path, device: str = "cpu") -> TransferModule:
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found; runs keep theirs in <run>/checkpoints/")
    model = TransferModule.load_from_checkpoint(checkpoint, map_location=device, weights_only=True)
    return model.eval()


@torch.no_grad()
def predict(model: TransferModule, paths: list[str | Path], top_k: int = 3) -> list[list[tuple[str, float]]]:
    """For each image: the `top_k` (class name, probability) pairs, most likely first."""
    transform = eval_transform(model.preset)
    images = torch.stack([transform(read_image(p, model.hparams.in_chans)) for p in paths])
    probabilities = model(images.to(model.device)).float().softmax(dim=1)
    values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
    return [
        [(model.class_names[i], float(v)) for v, i in zip(row_values, row_indices)]
        for row_values, row_indices in zip(values.tolist(), indices.tolist())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        model = load_model(args.checkpoint)
        results = predict(model, args.images, args.top_k)
    except (FileNotFoundError, BadImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, ranked in zip(args.images, results):
        print(f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, p in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
