"""How fast each pipeline feeds augmented training images: loader only, no network (data.augment choices).

    python benchmarks/augment_speed.py [image folder, default ../shared/data/hymenoptera]

Lite0's 224 px preset, batch 64, the best of two epochs after a warm-up batch; streaming with 2 workers.
Results and the choice they led to: benchmarks/AUGMENT_SPEED.md.
"""

from __future__ import annotations

import sys
import tempfile
import time

from tlbench.run.checks import check_config
from tlbench.run.train import build_datamodule, compose_config


def images_per_second(loader, epochs: int = 2) -> float:
    next(iter(loader))  # workers started, images on the device
    best = 0.0
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for _, labels in loader:
            seen += len(labels)
        best = max(best, seen / (time.perf_counter() - started))
    return best


def main(root: str) -> None:
    for pipeline, workers in (("memory", 0), ("streaming", 2)):
        for augment in ("crop_flip", "trivialaugment", "randaugment"):
            overrides = [
                "data=imagefolder", f"data.root={root}", "backbone=efficientnet_lite0", "data.batch_size=64",
                f"data.pipeline={pipeline}", f"data.num_workers={workers}", f"data.augment={augment}",
            ]  # fmt: skip
            with tempfile.TemporaryDirectory() as run_dir:
                datamodule = build_datamodule(check_config(compose_config(overrides)), run_dir)
                datamodule.setup()
                speed = images_per_second(datamodule.train_dataloader())
            print(f"{pipeline:9s} {augment:15s} {speed:6.0f} img/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/hymenoptera")
