"""Report charts: accuracy per strategy, learning curves over data sizes, accuracy vs cost, reliability."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlbench.analysis.collect import ALL
from tlbench.analysis.fonts import any_script
from tlbench.analysis.summary import (
    COSTS,
    METRICS,
    MORE_IS_BETTER,
    PARAMETER_COUNTS,
    RANK_BY,
    Analysis,
    Group,
    Stat,
    fmt_stat,
    size_label,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RELIABILITY_BINS = 10
POINT = {"markersize": 8, "capsize": 3, "linestyle": "none"}  # a configuration in the cost charts


@any_script()
def plot_accuracy(groups: list[Group], path: Path, metric: str = RANK_BY) -> Path:
    """Bars of mean `metric` ± std per strategy, grouped by backbone (and data / size where they vary)."""
    from matplotlib.figure import Figure

    contexts = list(dict.fromkeys(g.context for g in groups))
    series = list(dict.fromkeys(g.label for g in groups))
    vary_data = len({c[0] for c in contexts}) > 1
    vary_size = len({c[2] for c in contexts}) > 1
    labels = [
        b + (f"\n{d}" if vary_data else "") + (f"\n{size_label(s)}" if vary_size else "")
        for d, b, s in contexts
    ]
    width = 0.8 / len(series)
    # About 0.6 inch a bar: room for its label (mean, std, n) at the smallest font.
    fig = Figure(figsize=(max(6.0, 1.2 + len(contexts) * len(series) * 0.6), 4.5), layout="constrained")
    ax = fig.add_subplot()
    lookup = {(g.context, g.label): g.stats[metric] for g in groups}
    for i, label in enumerate(series):
        stats = [lookup.get((c, label), Stat(None, None, 0)) for c in contexts]
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(contexts))]
        means = [s.mean if s.mean is not None else np.nan for s in stats]
        errors = [s.std or 0.0 for s in stats]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=label)
        # Strategies often differ by less than a bar's outline: the numbers say what the heights cannot.
        for x, stat, error in zip(xs, stats, errors, strict=True):
            if stat.mean is not None:
                text = f"{stat.mean:.3f}\n±{'–' if stat.std is None else f'{stat.std:.3f}'}\nn={stat.n}"
                ax.text(x, stat.mean + error + 0.01, text, ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(range(len(contexts)), labels)
    ax.set_ylabel(f"{METRICS[metric]} (mean ± std over seeds)")
    ax.set_ylim(0, 1.2)  # room for the labels above a bar near 1.0
    ax.set_yticks(np.linspace(0, 1, 6))
    datasets = sorted({c[0] for c in contexts})
    ax.set_title(f"{METRICS[metric]} by strategy" + ("" if vary_data else f" on {datasets[0]}"))
    ax.legend(title="strategy", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


@any_script()
def plot_learning_curves(groups: list[Group], out_dir: Path, metric: str = RANK_BY) -> list[Path]:
    """Per backbone with two or more data sizes: `metric` ± std vs images per class; dashed: all images."""
    from matplotlib.figure import Figure

    by_setting = {(*g.context, g.label): g for g in groups}
    paths = []
    for backbone in sorted({g.backbone for g in groups}):
        sized = [g for g in groups if g.backbone == backbone and g.per_class != ALL and g.stats[metric].n]
        if len({g.per_class for g in sized}) < 2:
            continue
        vary_data = len({g.data for g in sized}) > 1
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        lines = list(dict.fromkeys((g.data, g.label) for g in sorted(sized, key=lambda g: g.data)))
        dashed = False
        for data, label in lines:
            points = sorted(
                (g for g in sized if (g.data, g.label) == (data, label)), key=lambda g: g.per_class
            )
            xs = np.array([g.per_class for g in points], dtype=float)
            means = np.array([g.stats[metric].mean for g in points])
            stds = np.array([g.stats[metric].std or 0.0 for g in points])
            (line,) = ax.plot(xs, means, marker="o", label=f"{label} ({data})" if vary_data else label)
            ax.fill_between(xs, means - stds, means + stds, color=line.get_color(), alpha=0.2)
            everything = by_setting.get((data, backbone, ALL, label))
            if everything is not None and everything.stats[metric].mean is not None:
                ax.axhline(everything.stats[metric].mean, color=line.get_color(), linestyle="--", alpha=0.6)
                dashed = True
        if dashed:
            ax.plot([], [], color="grey", linestyle="--", label="all images (dashed)")
        ax.set_xscale("log")
        ticks = sorted({g.per_class for g in sized})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training images per class (log scale)")
        ax.set_ylabel(f"{METRICS[metric]} (mean ± std over seeds)")
        ax.set_title(f"{backbone}: {METRICS[metric]} vs data size")
        ax.legend(title="strategy", fontsize="small")
        ax.grid(alpha=0.3)
        path = out_dir / f"learning_curve_{backbone.replace('/', '_')}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def frontier(xs: np.ndarray, ys: np.ndarray, more_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """The points no other beats on both accuracy and this one cost, from cheapest to dearest."""
    order = np.lexsort((-ys, -xs if more_is_better else xs))
    keep, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            keep.append(i)
            best = ys[i]
    return xs[keep], ys[keep]


@any_script()
def plot_pareto(pareto: list[tuple[Group, list[str]]], path: Path, metric: str = RANK_BY) -> Path:
    """Accuracy against each cost, a row per data × size; hollow: dominated; dashed: the panel's frontier."""
    pareto_figure(pareto, metric).savefig(path, dpi=110)
    return path


def pareto_figure(pareto: list[tuple[Group, list[str]]], metric: str = RANK_BY) -> Figure:
    """plot_pareto's figure; its legend names only what some panel draws."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    contexts = list(dict.fromkeys((g.data, g.per_class) for g, _ in pareto))
    strategies = list(dict.fromkeys(g.label for g, _ in pareto))
    backbones = list(dict.fromkeys(g.backbone for g, _ in pareto))
    colours = {s: f"C{i % 10}" for i, s in enumerate(strategies)}
    markers = {b: "osD^vP*Xh<>"[i % 11] for i, b in enumerate(backbones)}
    fig = Figure(figsize=(15, 3.6 * len(contexts) + 0.6), layout="constrained")
    axes = fig.subplots(len(contexts), len(COSTS), squeeze=False)
    frontier_drawn = False
    for row, (data, per_class) in zip(axes, contexts, strict=True):
        members = [(g, by) for g, by in pareto if (g.data, g.per_class) == (data, per_class)]
        for ax, (key, label) in zip(row, COSTS.items(), strict=True):
            known = [(g, by) for g, by in members if g.stats[key].mean is not None]
            for g, dominated_by in known:
                colour, accuracy = colours[g.label], g.stats[metric]
                face = "none" if dominated_by else colour
                style = {"color": colour, "markerfacecolor": face, "marker": markers[g.backbone]}
                ax.errorbar(g.stats[key].mean, accuracy.mean, accuracy.std or 0, **style, **POINT)
            more_is_better = key in MORE_IS_BETTER
            if len(known) > 1:
                costs = np.array([g.stats[key].mean for g, _ in known])
                xs, ys = frontier(costs, np.array([g.stats[metric].mean for g, _ in known]), more_is_better)
                if len(xs) > 1:  # a frontier of one point is no line
                    ax.plot(xs, ys, linestyle="--", color="grey", alpha=0.6, zorder=0)
                    frontier_drawn = True
            if key in PARAMETER_COUNTS:
                ax.set_xscale("log")
            ax.set_xlabel(label + (" (more is better)" if more_is_better else " (less is better)"))
            ax.set_ylabel(METRICS[metric])
            ax.set_title(f"{data}, {size_label(per_class)}", fontsize="small")
            ax.grid(alpha=0.3)
    dot = {"marker": "o", "linestyle": "none"}
    handles = [Line2D([], [], color=colours[s], label=s, **dot) for s in strategies]
    if len(backbones) > 1:
        handles += [Line2D([], [], color="black", label=b, **dot | {"marker": markers[b]}) for b in backbones]
    if any(by for _, by in pareto):
        handles += [Line2D([], [], color="black", markerfacecolor="none", label="dominated", **dot)]
    if frontier_drawn:
        handles += [Line2D([], [], color="grey", linestyle="--", label="frontier of the panel")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small")
    fig.suptitle(f"{METRICS[metric]} (mean ± std over seeds) against cost")
    return fig


def reliability(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per non-empty equal-width confidence bin: mean confidence, accuracy and the number of images."""
    bins = RELIABILITY_BINS
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    filled = counts > 0
    mean_confidence = np.bincount(which, confidence, bins)[filled] / counts[filled]
    accuracy = np.bincount(which, correct, bins)[filled] / counts[filled]
    return mean_confidence, accuracy, counts[filled]


@any_script()
def plot_reliability(analysis: Analysis, out_dir: Path) -> list[Path]:
    """reliability_<backbone>.png from the predictions files: accuracy against the confidence of the
    predicted class (below the diagonal: over-confident); a panel per data × size, a curve per strategy,
    every seed's test images pooled, marker area by the bin's images."""
    from matplotlib.figure import Figure

    panels: dict[str, dict[str, list[Group]]] = {}
    for g in sorted(analysis.groups, key=lambda g: g.backbone):
        if any(analysis.predictions.get(run.path) is not None for run in g.runs):
            panels.setdefault(g.backbone, {}).setdefault(f"{g.data}, {size_label(g.per_class)}", []).append(g)
    paths = []
    for backbone, by_panel in panels.items():
        fig = Figure(figsize=(4.8 * len(by_panel) + 1.5, 4.8), layout="constrained")
        for ax, (name, groups) in zip(fig.subplots(1, len(by_panel), squeeze=False)[0], by_panel.items()):
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
            for g in groups:
                parts = [p for run in g.runs if (p := analysis.predictions.get(run.path)) is not None]
                x, y, n = reliability(
                    np.concatenate([p.confidence for p in parts]), np.concatenate([p.correct for p in parts])
                )
                ece = g.stats["test/ece"]
                label = g.label + (f" (ECE {fmt_stat(ece, 'test/ece')})" if ece.mean is not None else "")
                (line,) = ax.plot(x, y, marker="o", markersize=3, label=label)
                ax.scatter(x, y, s=12 + 200 * n / n.sum(), color=line.get_color(), alpha=0.5)
            ax.set(xlim=(0, 1.02), ylim=(0, 1.02), aspect="equal", ylabel="accuracy in the bin")
            ax.set_xlabel(f"confidence of the predicted class ({RELIABILITY_BINS} bins)")
            ax.set_title(name, fontsize="small")
            ax.legend(title="strategy", fontsize="small", loc="upper left")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{backbone}: reliability (test images of every seed)")
        paths.append(out_dir / f"reliability_{backbone.replace('/', '_')}.png")
        fig.savefig(paths[-1], dpi=110)
    return paths
