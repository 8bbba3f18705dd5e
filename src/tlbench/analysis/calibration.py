"""Reliability diagrams from the runs' predictions files: for test images grouped by the confidence of
their predicted class, how often that prediction was right. A calibrated model lies on the diagonal; below
it, the model is over-confident. The expected calibration error of each run is `test/ece` in its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BINS = 10


@dataclass
class Curve:
    label: str
    confidence: np.ndarray  # the predicted class's probability, every image of every seed pooled
    correct: np.ndarray  # 1.0 where the predicted class is the true one
    ece: str = ""  # the runs' own test/ece, already formatted


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, ...]:
    """Per non-empty equal-width confidence bin: mean confidence, accuracy and the number of images."""
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    filled = counts > 0
    mean_confidence = np.bincount(which, confidence, bins)[filled] / counts[filled]
    accuracy = np.bincount(which, correct, bins)[filled] / counts[filled]
    return mean_confidence, accuracy, counts[filled]


def plot(panels: dict[str, list[Curve]], title: str, path: Path) -> Path:
    """One panel per data × data size, one curve per strategy; marker area grows with the bin's images."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8 * len(panels) + 1.5, 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, curves) in zip(axes, panels.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        for curve in curves:
            x, y, n = reliability(curve.confidence, curve.correct)
            (line,) = ax.plot(x, y, marker="o", markersize=3, label=f"{curve.label}{curve.ece}")
            ax.scatter(x, y, s=12 + 200 * n / n.sum(), color=line.get_color(), alpha=0.5)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel(f"confidence of the predicted class ({BINS} bins)")
        ax.set_ylabel("accuracy in the bin")
        ax.set_title(name, fontsize="small")
        ax.legend(title="strategy", fontsize="small", loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path
