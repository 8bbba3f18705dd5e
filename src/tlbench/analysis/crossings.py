"""Where two strategies change places over data sizes (`sweep=data_size`): the last change of lead in the
verdict's per-size comparisons, interpolated in log images per class, with its bootstrap interval; a lead is
claimed only where the comparison's interval shows it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tlbench.analysis.markdown import md
from tlbench.analysis.verdict import ALPHA, Comparison, fmt_diff


@dataclass
class Crossing:
    a: str  # the strategy ahead at the largest data size
    b: str
    sizes: list[int]
    diffs: list[float]  # A − B at each size
    between: tuple[int, int] | None  # the sizes the last change of lead lies between
    at: float | None  # interpolated in log(images per class)
    low: float | None  # 95% bootstrap interval of `at`
    high: float | None
    share: float | None  # share of bootstrap replicates that end with A ahead after a change of lead
    text: str


def last_crossing(sizes: np.ndarray, diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of diffs (R, K) → where the lead last changed (nan: never) and the index of the size before."""
    last = np.sign(diffs[:, -1:])
    differs = (np.sign(diffs[:, :-1]) != last) & (last != 0)
    found = differs.any(axis=1)
    k = diffs.shape[1] - 2 - np.argmax(differs[:, ::-1], axis=1)
    rows = np.arange(len(diffs))
    d0, d1 = diffs[rows, k], diffs[rows, k + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d0 == d1, 0.0, d0 / (d0 - d1))
    logs = np.log(sizes)
    at = np.exp(logs[k] + t * (logs[k + 1] - logs[k]))
    return np.where(found, at, np.nan), k


def told_apart(c: Comparison) -> bool | None:
    """Whether the comparison's 95% interval excludes 0 (None: it has no interval)."""
    if c.low is None or c.high is None:
        return None
    return c.low > 0 or c.high < 0


def crossing(sizes: list[int], comparisons: list[Comparison]) -> Crossing:
    """Comparisons of the same pair (same `a` and `b`) at increasing data sizes → where the lead changes."""
    if comparisons[-1].diff < 0:
        comparisons = [c.flipped() for c in comparisons]
    a, b = comparisons[0].a, comparisons[0].b
    name_a, name_b = md(a), md(b)  # the text is Markdown
    diffs = np.array([c.diff for c in comparisons])
    grid = np.asarray(sizes, dtype=float)
    found, before = last_crossing(grid, diffs[None, :])
    at = float(found[0])
    shown = ", ".join(f"{n}: {fmt_diff(c)}" for n, c in zip(sizes, comparisons, strict=True))
    if all(c.one_seed for c in comparisons):
        shown += " (one seed per size: test-image sampling only, not training randomness)"
    told = [told_apart(c) for c in comparisons]  # None: no interval to tell by
    if math.isnan(at):
        if diffs[-1] == 0:
            how = f"{name_a} and {name_b} end level"
        elif None in told or all(told):
            how = f"{name_a} is ahead of {name_b} at every size"
        elif not any(told):  # a higher mean everywhere is no lead the runs can show
            how = f"{name_a} and {name_b} are told apart at no size; {name_a}'s mean is the higher at each"
        else:
            at_sizes = ", ".join(str(n) for n, t in zip(sizes, told, strict=True) if t)
            how = f"{name_a}'s mean is the higher at every size, told apart at {at_sizes} images/class only"
        text = f"{how} ({name_a} − {name_b} by images/class: {shown})"
        return Crossing(a, b, list(sizes), diffs.tolist(), None, None, None, None, None, text)
    k = int(before[0])
    between = (sizes[k], sizes[k + 1])
    low = high = share = None
    uncertainty = "no bootstrap replicates (no predictions files): only the bracketing sizes are known"
    if all(c.replicates is not None for c in comparisons):
        replicates = np.stack([c.replicates for c in comparisons], axis=1)
        points, _ = last_crossing(grid, replicates)
        same_end = replicates[:, -1] > 0
        share = float(np.mean(same_end & ~np.isnan(points)))
        kept = points[same_end & ~np.isnan(points)]
        if len(kept):
            low, high = (float(x) for x in np.quantile(kept, [ALPHA / 2, 1 - ALPHA / 2]))
            uncertainty = (
                f"95% bootstrap interval {low:.0f}–{high:.0f}; {share:.0%} of replicates show the overtaking"
            )
    where = f"about {at:.0f} images/class (between {between[0]} and {between[1]}; {uncertainty})"
    if told[k] is False or told[-1] is False:  # a lead the intervals do not show is no overtaking
        unclear = " and ".join(str(sizes[i]) for i in sorted({k, len(sizes) - 1}) if told[i] is False)
        text = (
            f"the means of {name_a} and {name_b} cross at {where}, but at {unclear} images/class their "
            f"interval includes 0: no overtaking is shown. {name_a} − {name_b} by images/class: {shown}"
        )
    else:
        text = f"{name_a} overtakes {name_b} from {where}. {name_a} − {name_b} by images/class: {shown}"
    return Crossing(a, b, list(sizes), diffs.tolist(), between, at, low, high, share, text)
