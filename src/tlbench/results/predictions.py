"""Per-image test predictions beside results.json, for the report's paired bootstrap and reliability
diagrams. `predictions.csv`, one row per test image in test-loader order:

    item,label,prob_ants,prob_bees
    /data/hymenoptera/val/ants/10308379_1b6c72e180.jpg,ants,0.912,0.088

`item`: the file path (or `<array>:<index>` for in-memory datasets); `label`: the true class; one softmax
`prob_<class>` per class in the model's order. Strategies' files pair by `item`."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlbench.results.files import write_atomic

PREDICTIONS_FILE = "predictions.csv"
PROB_PREFIX = "prob_"

log = logging.getLogger("tlbench")


@dataclass
class Predictions:
    items: list[str]
    targets: np.ndarray  # (N,) class index of each item
    probs: np.ndarray  # (N, C) softmax probabilities
    classes: list[str]

    @property
    def correct(self) -> np.ndarray:
        """1.0 where the most probable class is the true one (what test/acc averages)."""
        return (self.probs.argmax(axis=1) == self.targets).astype(float)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    def __len__(self) -> int:
        return len(self.items)


def item_id(item: object) -> str:
    return (
        item if isinstance(item, str) else ":".join(map(str, item if isinstance(item, Sequence) else [item]))
    )


def write_predictions(
    run_dir: str | Path, items: Sequence, probs: np.ndarray, targets: np.ndarray, classes: list[str]
) -> Path | None:
    """`run_dir/predictions.csv`; None (warned) for a partial test pass (fast_dev_run, limit, DDP shards)."""
    probs, targets = np.asarray(probs, dtype=float), np.asarray(targets)
    if len(probs) != len(items) or len(targets) != len(items):
        why = f"{len(probs)} predictions for {len(items)} test images (a partial test pass)"
        log.warning("no %s: %s", PREDICTIONS_FILE, why)
        return None
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["item", "label", *(PROB_PREFIX + name for name in classes)])
    for item, target, row in zip(items, targets, probs, strict=True):
        writer.writerow([item_id(item), classes[int(target)], *(f"{p:.6g}" for p in row)])
    return write_atomic(Path(run_dir) / PREDICTIONS_FILE, text.getvalue())


def read_predictions(run_dir: str | Path) -> Predictions | None:
    """The run's predictions, or None when it has no (readable) predictions.csv."""
    try:
        rows = list(csv.reader(io.StringIO((Path(run_dir) / PREDICTIONS_FILE).read_text(), newline="")))
    except OSError:
        return None
    if not rows or rows[0][:2] != ["item", "label"]:
        return None
    classes = [name.removeprefix(PROB_PREFIX) for name in rows[0][2:]]
    index = {name: i for i, name in enumerate(classes)}
    body = rows[1:]
    try:
        probs = np.array([[float(p) for p in row[2:]] for row in body], dtype=float).reshape(
            len(body), len(classes)
        )
        targets = np.array([index[row[1]] for row in body], dtype=int)
    except (ValueError, KeyError):
        return None
    return Predictions([row[0] for row in body], targets, probs, classes)
