"""What accuracy costs: each configuration (backbone × strategy, mean over its seeds) as accuracy against
wall time, train images/s, trainable parameters and peak memory, and which configurations another one
beats on every axis (Pareto-dominated). Configurations are compared only on the same data and data size,
where their accuracies are measured on the same test images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# cost key -> (axis label, whether more is better)
AXES = {
    "wall_time_s": ("wall time (s)", False),
    "train_images_per_s": ("train images/s", True),
    "trainable_params": ("trainable parameters", False),
    "peak_memory_mb": ("peak memory (MB)", False),
}


@dataclass
class Point:
    context: str  # data and data size: points are compared only within one
    backbone: str
    strategy: str
    accuracy: float
    accuracy_std: float | None
    costs: dict[str, float | None]
    dominated_by: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.backbone} / {self.strategy}"


def goodness(point: Point) -> dict[str, float]:
    """Every known axis as a number where larger is better."""
    values = {"accuracy": point.accuracy}
    for key, (_, more_is_better) in AXES.items():
        value = point.costs.get(key)
        if value is not None:
            values[key] = value if more_is_better else -value
    return values


def dominates(a: Point, b: Point) -> bool:
    """a is as good as b on every axis both have and better on at least one."""
    ga, gb = goodness(a), goodness(b)
    shared = ga.keys() & gb.keys()
    return all(ga[k] >= gb[k] for k in shared) and any(ga[k] > gb[k] for k in shared)


def mark_dominated(points: list[Point]) -> list[Point]:
    for point in points:
        point.dominated_by = [
            other.name
            for other in points
            if other is not point and other.context == point.context and dominates(other, point)
        ]
    return points


def fmt_cost(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if key == "trainable_params" or abs(value) >= 100 else f"{value:,.1f}"


def render_table(points: list[Point], accuracy_name: str = "test acc") -> str:
    header = ["data", "configuration", accuracy_name, *(label for label, _ in AXES.values()), "Pareto"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        spread = "" if p.accuracy_std is None else f" ± {p.accuracy_std:.4f}"
        status = f"dominated by {', '.join(p.dominated_by)}" if p.dominated_by else "**optimal**"
        cells = [p.context, p.name, f"{p.accuracy:.4f}{spread}", *(fmt_cost(k, p.costs.get(k)) for k in AXES)]
        lines.append("| " + " | ".join([*cells, status]) + " |")
    return "\n".join(lines)


def frontier(xs: np.ndarray, ys: np.ndarray, more_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """The points no other beats on both accuracy and this one cost, from cheapest to dearest."""
    order = np.lexsort((-ys, -xs if more_is_better else xs))
    keep, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            keep.append(i)
            best = ys[i]
    return xs[keep], ys[keep]


def plot(points: list[Point], path: Path, accuracy_name: str = "test acc") -> Path:
    """One row of four panels (accuracy against each cost) per data × data size; hollow markers are
    configurations dominated on all axes together, the dashed line each panel's own two-axis frontier."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    contexts = list(dict.fromkeys(p.context for p in points))
    strategies = list(dict.fromkeys(p.strategy for p in points))
    backbones = list(dict.fromkeys(p.backbone for p in points))
    colours = {s: f"C{i % 10}" for i, s in enumerate(strategies)}
    markers = {b: "osD^vP*Xh<>"[i % 11] for i, b in enumerate(backbones)}
    fig = Figure(figsize=(15, 3.6 * len(contexts) + 0.6), layout="constrained")
    axes = fig.subplots(len(contexts), len(AXES), squeeze=False)
    for row, context in zip(axes, contexts, strict=True):
        members = [p for p in points if p.context == context]
        for ax, (key, (label, more_is_better)) in zip(row, AXES.items(), strict=True):
            known = [p for p in members if p.costs.get(key) is not None]
            for p in known:
                colour = colours[p.strategy]
                ax.errorbar(
                    p.costs[key],
                    p.accuracy,
                    yerr=p.accuracy_std or 0.0,
                    marker=markers[p.backbone],
                    markersize=8,
                    color=colour,
                    markerfacecolor="none" if p.dominated_by else colour,
                    capsize=3,
                    linestyle="none",
                )
            if len(known) > 1:
                xs, ys = frontier(
                    np.array([p.costs[key] for p in known]),
                    np.array([p.accuracy for p in known]),
                    more_is_better,
                )
                ax.plot(xs, ys, linestyle="--", color="grey", alpha=0.6, zorder=0)
            if key == "trainable_params":
                ax.set_xscale("log")
            ax.set_xlabel(label + (" (more is better)" if more_is_better else " (less is better)"))
            ax.set_ylabel(accuracy_name)
            ax.set_title(context, fontsize="small")
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[s], marker="o", linestyle="none", label=s) for s in strategies]
    if len(backbones) > 1:
        handles += [
            Line2D([], [], color="black", marker=markers[b], linestyle="none", label=b) for b in backbones
        ]
    handles += [
        Line2D(
            [], [], color="black", marker="o", markerfacecolor="none", linestyle="none", label="dominated"
        ),
        Line2D([], [], color="grey", linestyle="--", label="frontier of the panel"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small")
    fig.suptitle(f"{accuracy_name} (mean ± std over seeds) against cost")
    fig.savefig(path, dpi=110)
    return path
