"""Is one strategy better than another, or can the runs not tell? Paired comparisons, Holm-corrected, and one
verdict line per data × backbone × data size. Pure statistics: summary.py reads the runs.

**The paired bootstrap** (`compare`). Strategies A and B are paired by seed (under k-fold, by (seed, fold)):
runs with the same seed share the training subset and the test split, so each test image i of a common seed s
has a paired difference D[s, i] = score_A(i) − score_B(i) (score 1.0 when classified right, so the mean of D
is the difference in accuracy). The observed difference is the mean over seeds of the per-seed mean of D. One
bootstrap replicate draws S seeds with replacement from the S common seeds, then test images with replacement,
the same draw for A and B (that is the pairing): *crossed* — every seed tested on the same images (a fixed
test folder) — one draw of N images per replicate, shared by every drawn seed; *nested* — a seeded split per
seed — a separate draw within each drawn seed; and averages D over them.
`N_BOOT` replicates (a fixed-seed generator: reproducible reports) give the 95% percentile interval and the
two-sided p-value 2·min(P*(d ≤ 0), P*(d ≥ 0)), each share counted as (k + 1) / (B + 1): below 0.05 exactly
when the interval excludes 0. N images drawn with replacement are drawn as multinomial counts over the
distinct values of D: the same distribution, cheap because accuracy differences are −1, 0 or 1.
**Without predictions files** (older runs): a paired t-test over the seeds' test accuracies
(`scipy.stats.ttest_rel`) with its 95% interval.
**Holm** (`holm`): within one group, the p-values of all pairs are adjusted by Holm's step-down method, which
keeps the chance of any false "A beats B" in the group ≤ 5%. **The verdict** (`judge`): the best mean wins
when separated (Holm p < 0.05, the same sign) from every other over two or more seeds; otherwise those not
separated from it cannot be told apart. One seed never wins: its interval resamples only the test images, so
it says whether a difference is beyond test-image sampling, not whether another seed (initialisation, data
order, augmentation) would keep it.
**Seeds to separate a tie** (`seeds_needed`): with s the between-seed SD of the per-seed differences and v the
bootstrap variance from resampling the shared test images alone (crossed design only; 0 when nested, where s
already holds it), taken not to shrink with more seeds (conservative), the smallest n with
t(0.975, n − 1) · sqrt(s² / n + v) < |d| would give a 95% interval that excludes 0 if d and the variances
held. When 1.96 · sqrt(v) ≥ |d| no number of seeds does: the test set is too small.
**Where strategies cross** (`crossing`): over data sizes n₁ < … < n_K, the last size where A − B has the other
sign than at the largest, interpolated linearly in log(images per class) to the next size; the same on every
bootstrap replicate (sizes are independent runs: replicate b of each is one curve) gives a 95% interval."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from tlbench.analysis.markdown import md
from tlbench.analysis.wording import one_seed_verdict, seed_counts, why_not_separated

ALPHA = 0.05
N_BOOT = 4000
SEED = 0
CHUNK = 1000  # replicates drawn at a time, so a 10,000-image test set stays a few MB
MAX_SEEDS = 1000


@dataclass
class Sample:
    """One run of one strategy: its test accuracy and, when it saved predictions, each test image's score."""

    value: float | None
    items: Sequence[str] | None = None
    scores: np.ndarray | None = None

    @property
    def has_predictions(self) -> bool:
        return self.scores is not None and self.items is not None


@dataclass
class Comparison:
    a: str
    b: str
    diff: float  # mean over seeds of A − B
    low: float | None  # 95% interval
    high: float | None
    p: float | None
    method: str  # "bootstrap (crossed)" | "bootstrap (nested)" | "paired t-test" | "none"
    seeds: list[Any]
    n_images: int | None = None
    seed_sd: float | None = None  # between-seed SD of the per-seed differences (ddof=1)
    image_var: float = 0.0  # variance from the test images that more seeds do not shrink
    p_holm: float | None = None
    note: str = ""
    replicates: np.ndarray | None = field(default=None, repr=False)

    @property
    def separated(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA

    @property
    def one_seed(self) -> bool:
        """Compared on a single seed: the interval holds test-image sampling only, no training randomness."""
        return len(self.seeds) == 1

    def flipped(self) -> Comparison:
        """The same comparison read as B − A."""
        low, high, replicates = (None if x is None else -x for x in (self.high, self.low, self.replicates))
        return replace(self, a=self.b, b=self.a, diff=-self.diff, low=low, high=high, replicates=replicates)

    def to_json(self) -> dict[str, Any]:
        keys = ("a", "b", "diff", "low", "high", "p", "p_holm", "method", "seeds", "n_images", "seed_sd")
        return {k: getattr(self, k) for k in keys} | {"image_var": self.image_var, "note": self.note}


@dataclass
class GroupVerdict:
    context: tuple
    ranking: list[tuple[str, float]]  # (strategy, mean) best first
    comparisons: list[Comparison]  # every pair, better-mean strategy as `a`
    winner: str | None
    tied: list[str]  # the set that cannot be told apart from the best (winner alone when there is one)
    seeds_to_separate: dict[str, int | str | None]  # tied strategy -> seeds in all (or why not)

    def to_json(self) -> dict[str, Any]:
        return {
            "ranking": [{"strategy": s, "mean": m} for s, m in self.ranking],
            "winner": self.winner,
            "cannot_tell_apart": self.tied if self.winner is None else [],
            "seeds_to_separate": self.seeds_to_separate,
            "one_seed": self.one_seed,
            "comparisons": [c.to_json() for c in self.comparisons],
            "verdict": self.text,
        }

    @property
    def one_seed(self) -> bool:
        """Every comparison with the best ran on a single common seed: no ranking can be claimed."""
        vs_best = [c for c in self.comparisons if c.a == self.ranking[0][0]]
        return bool(vs_best) and all(c.one_seed for c in vs_best)

    @property
    def text(self) -> str:
        """The verdict in one line of Markdown: what the comparisons show and no more."""
        best = self.ranking[0][0]
        vs_best = {c.b: c for c in self.comparisons if c.a == best}
        how = "; ".join(sorted({c.method + (f": {c.note}" if c.note else "") for c in vs_best.values()}))
        if len(self.ranking) == 1:
            return f"only **{md(best)}** ran"
        if self.winner is not None:
            leads = ", ".join(
                f"{md(o)} by {fmt_diff(c)} (Holm p {fmt_p(c.p_holm)})" for o, c in vs_best.items()
            )
            over = seed_counts(vs_best.values())
            return f"**{md(self.winner)}** wins: ahead of {leads}, over {over} [{how}]"
        gaps = {
            o: f"{md(best)} − {md(o)} = {fmt_diff(c)}, Holm p {fmt_p(c.p_holm)}" for o, c in vs_best.items()
        }
        if self.one_seed:
            interval = any(c.low is not None for c in vs_best.values())
            return one_seed_verdict(md(best), "; ".join(gaps.values()), how, interval)
        parts = [
            f"{gaps[o]}; {why_not_separated(vs_best[o], self.seeds_to_separate.get(o))}"
            for o in self.tied[1:]
        ]
        text = f"{', '.join(f'**{md(s)}**' for s in self.tied)} cannot be told apart ({'; '.join(parts)})"
        behind = [o for o in vs_best if o not in self.tied]
        if behind:
            text += f"; behind: {', '.join(map(md, behind))}"
        return f"{text} [{how}]"


def seed_key(seed: Any) -> tuple[tuple[bool, str], ...]:
    """Sort order of seeds, numbers first; a (seed, fold) pair of k-fold runs sorts by seed, then fold."""
    parts = seed if isinstance(seed, tuple) else (seed,)
    return tuple((not isinstance(part, int), str(part).zfill(12)) for part in parts)


def resampled_means(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, K): means of `size` resamples of the N columns of `values` (K, N), one draw for every row."""
    distinct, counts = np.unique(values, axis=1, return_counts=True)
    n = values.shape[1]
    out = np.empty((size, values.shape[0]))
    for start in range(0, size, CHUNK):
        draws = rng.multinomial(n, counts / n, size=min(CHUNK, size - start))
        out[start : start + len(draws)] = draws @ distinct.T / n
    return out


def aligned_differences(a: dict[Any, Sample], b: dict[Any, Sample], seeds: list) -> list[np.ndarray] | None:
    """Per seed, A − B image by image (matched by item), or None where a seed's runs tested other images."""
    differences = []
    for seed in seeds:
        sa, sb = a[seed], b[seed]
        position = {item: i for i, item in enumerate(sb.items)}
        if len(sa.items) != len(sb.items) or set(sa.items) != set(position):
            return None
        order = np.array([position[item] for item in sa.items])
        differences.append(sa.scores - sb.scores[order])
    return differences


def percentile_p(replicates: np.ndarray) -> float:
    """Two-sided: twice the smaller share of replicates on either side of 0, each as (k + 1) / (B + 1)."""
    below = (np.count_nonzero(replicates <= 0) + 1) / (len(replicates) + 1)
    above = (np.count_nonzero(replicates >= 0) + 1) / (len(replicates) + 1)
    return min(1.0, 2 * min(below, above))


def bootstrap(
    a_label: str,
    b_label: str,
    differences: list[np.ndarray],
    seeds: list,
    items: list,
    rng: np.random.Generator,
) -> Comparison:
    s = len(differences)
    per_seed = np.array([d.mean() for d in differences])
    picks = rng.integers(0, s, size=(N_BOOT, s))
    crossed = all(list(i) == list(items[0]) for i in items[1:])
    if crossed:
        image_means = resampled_means(np.stack(differences), N_BOOT, rng)  # (B, S), one image draw per row
        replicates = np.take_along_axis(image_means, picks, axis=1).mean(axis=1)
        image_var = float(image_means.mean(axis=1).var(ddof=1))
    else:
        drawn = np.empty(picks.shape)
        for seed_index, d in enumerate(differences):
            where = picks == seed_index
            drawn[where] = resampled_means(d[None, :], int(where.sum()), rng)[:, 0]
        replicates = drawn.mean(axis=1)
        image_var = 0.0
    low, high = (float(x) for x in np.quantile(replicates, [ALPHA / 2, 1 - ALPHA / 2]))
    diff, p, n = float(per_seed.mean()), percentile_p(replicates), len(differences[0])
    sd = float(per_seed.std(ddof=1)) if s > 1 else None
    method = f"bootstrap ({'crossed' if crossed else 'nested'})"
    return Comparison(
        a_label, b_label, diff, low, high, p, method, seeds, n, sd, image_var, replicates=replicates
    )


def t_test(a_label: str, b_label: str, a: list[float], b: list[float], seeds: list, note: str) -> Comparison:
    differences = np.asarray(a) - np.asarray(b)
    diff = float(differences.mean())
    if len(differences) < 2:
        return Comparison(a_label, b_label, diff, None, None, None, "none", seeds, note=note + "; one seed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: t is undefined
        result = stats.ttest_rel(a, b)
        interval = result.confidence_interval(1 - ALPHA)
    p = float(result.pvalue)
    if math.isnan(p):  # every seed gave the same difference
        p = 1.0 if diff == 0 else 0.0
    low, high, sd = float(interval.low), float(interval.high), float(differences.std(ddof=1))
    return Comparison(a_label, b_label, diff, low, high, p, "paired t-test", seeds, seed_sd=sd, note=note)


def compare(
    a_label: str, a: dict[Any, Sample], b_label: str, b: dict[Any, Sample], rng: np.random.Generator
) -> Comparison:
    """A − B over the seeds both ran: the paired bootstrap when every such run saved predictions of the
    same test images, else a paired t-test over the seeds' test accuracies (see the module docstring)."""
    seeds = sorted(set(a) & set(b), key=seed_key)
    if not seeds:
        return Comparison(a_label, b_label, math.nan, None, None, None, "none", [], note="no seed in common")
    if all(a[s].has_predictions and b[s].has_predictions for s in seeds):
        differences = aligned_differences(a, b, seeds)
        if differences is not None:
            return bootstrap(a_label, b_label, differences, seeds, [a[s].items for s in seeds], rng)
        why = "the runs of a seed tested different images"
    else:
        why = "no predictions files"
    values = [(a[s].value, b[s].value) for s in seeds if a[s].value is not None and b[s].value is not None]
    seeds = [s for s in seeds if a[s].value is not None and b[s].value is not None]
    return t_test(a_label, b_label, [x for x, _ in values], [y for _, y in values], seeds, why)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm: the k-th smallest of m p-values × (m − k + 1), monotone, ≤ 1; None stays None (not in m)."""
    tested = [i for i, p in enumerate(p_values) if p is not None]
    p = np.array([p_values[i] for i in tested], dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled)) if len(p) else scaled
    result: list[float | None] = [None] * len(p_values)
    for rank, position in enumerate(order):
        result[tested[position]] = float(adjusted[rank])
    return result


def seeds_needed(diff: float, seed_sd: float | None, image_var: float = 0.0) -> int | str | None:
    """Seeds in all for a 95% interval excluding 0 (module docstring), or why no count can be given."""
    if diff == 0 or math.isnan(diff):
        return "no difference to separate"
    if seed_sd is None:
        return None
    if stats.norm.ppf(1 - ALPHA / 2) * math.sqrt(image_var) >= abs(diff):
        return "no number of seeds would: the test images alone leave more uncertainty than the difference"
    for n in range(2, MAX_SEEDS + 1):
        if stats.t.ppf(1 - ALPHA / 2, n - 1) * math.sqrt(seed_sd**2 / n + image_var) < abs(diff):
            return n
    return f"more than {MAX_SEEDS}"


def mean_value(samples: dict[Any, Sample]) -> float:
    values = [s.scores.mean() if s.has_predictions else s.value for s in samples.values()]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def fmt_diff(c: Comparison) -> str:
    interval = "" if c.low is None else f" [{c.low:+.3f}, {c.high:+.3f}]"
    return f"{c.diff:+.3f}{interval}"


def shown_behind(c: Comparison) -> bool:
    """B is shown to be behind A: separated, A ahead on the seeds both ran, and more than one such seed."""
    return c.separated and c.diff > 0 and not c.one_seed


def judge(context: tuple, arms: dict[str, dict[Any, Sample]], seed: int = SEED) -> GroupVerdict:
    """All pairs of strategies of one data × backbone × data size, Holm-adjusted, and the verdict."""
    rng = np.random.default_rng(seed)
    ranking = sorted(((label, mean_value(runs)) for label, runs in arms.items()), key=lambda x: -x[1])
    order = [label for label, _ in ranking]
    comparisons = [compare(a, arms[a], b, arms[b], rng) for a, b in combinations(order, 2)]
    for c, p in zip(comparisons, holm([c.p for c in comparisons]), strict=True):
        c.p_holm = p
    best = order[0]
    vs_best = {c.b: c for c in comparisons if c.a == best}
    winner = best if vs_best and all(shown_behind(c) for c in vs_best.values()) else None
    tied = [best] if winner else [best, *(o for o, c in vs_best.items() if not shown_behind(c))]
    needed = {o: seeds_needed(vs_best[o].diff, vs_best[o].seed_sd, vs_best[o].image_var) for o in tied[1:]}
    return GroupVerdict(context, ranking, comparisons, winner, tied, needed)
