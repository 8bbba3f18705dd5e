"""What the compared strategies give together, from the predictions files the runs already wrote: per data ×
backbone × data size, the ensemble of every compared strategy (per seed, the mean of their probabilities)
against the best single strategy with the verdict's paired bootstrap (verdict.compare), and how often two
strategies are wrong on the same test image. Pure arithmetic on predictions: no training, no new runs."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from tlbench.analysis import verdict
from tlbench.analysis.markdown import md
from tlbench.analysis.wording import ONE_SEED, plural
from tlbench.results.predictions import Predictions

NAME = "ensemble"


@dataclass
class SharedErrors:
    """Shares of the test images (mean over the seeds both ran) that A and B get wrong together or alone."""

    a: str
    b: str
    both: float
    only_a: float
    only_b: float
    seeds: list[Any]
    n_images: int

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("a", "b", "both", "only_a", "only_b", "seeds", "n_images")}


@dataclass
class Ensemble:
    context: tuple
    members: list[str]  # the strategies averaged, in the verdict's order
    best: str  # the best single strategy by mean (the verdict's first)
    comparison: verdict.Comparison | None  # ensemble − best; None when no seed has every member's predictions
    shared: list[SharedErrors]

    @property
    def text(self) -> str:
        """One line of Markdown that claims what the comparison shows and no more."""
        c, best = self.comparison, md(self.best)
        if c is None:
            return "no ensemble: no seed has predictions files of the same test images for every strategy"
        gap = f"ensemble − {best} = {verdict.fmt_diff(c)}, p {verdict.fmt_p(c.p)} [{c.method}]"
        if c.one_seed:
            return f"one seed: {gap}; {ONE_SEED}: it cannot show whether the ensemble helps"
        over = plural(len(c.seeds), "seed")
        if verdict.shown_behind(c):
            return f"the ensemble beats {best}, the best single strategy, over {over} ({gap})"
        if c.separated and c.diff < 0:
            return f"{best}, the best single strategy, beats the ensemble over {over} ({gap})"
        return f"the ensemble and {best}, the best single strategy, cannot be told apart over {over} ({gap})"

    def to_json(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "best_single": self.best,
            "comparison": None if self.comparison is None else self.comparison.to_json(),
            "text": self.text,
            "shared_errors": [s.to_json() for s in self.shared],
        }


def aligned(runs: dict[str, Predictions]) -> dict[str, Predictions] | None:
    """The members' predictions of one seed in the first member's item order, or None where they tested
    other images or name other classes (nothing to average)."""
    first = next(iter(runs.values()))
    out = {}
    for label, p in runs.items():
        position = {item: i for i, item in enumerate(p.items)}
        if (
            p.classes != first.classes
            or len(p.items) != len(first.items)
            or set(position) != set(first.items)
        ):
            return None
        order = np.array([position[item] for item in first.items])
        out[label] = Predictions(first.items, p.targets[order], p.probs[order], p.classes)
    return out


def members_by_seed(runs: dict[str, dict[Any, Predictions]]) -> dict[Any, dict[str, Predictions]]:
    """seed -> every member's aligned predictions, for the seeds where every member has them."""
    seeds = set.intersection(*(set(by_seed) for by_seed in runs.values()))
    out = {}
    for seed in sorted(seeds, key=verdict.seed_key):
        found = aligned({label: by_seed[seed] for label, by_seed in runs.items()})
        if found is not None:
            out[seed] = found
    return out


def shared_errors(a: str, b: str, by_seed: dict[Any, dict[str, Predictions]]) -> SharedErrors:
    wrong = {s: (1 - p[a].correct, 1 - p[b].correct) for s, p in by_seed.items()}
    both = np.mean([np.mean(wa * wb) for wa, wb in wrong.values()])
    only_a = np.mean([np.mean(wa * (1 - wb)) for wa, wb in wrong.values()])
    only_b = np.mean([np.mean((1 - wa) * wb) for wa, wb in wrong.values()])
    n = len(next(iter(by_seed.values()))[a].items)
    return SharedErrors(a, b, float(both), float(only_a), float(only_b), list(by_seed), n)


def ensemble(
    decision: verdict.GroupVerdict,
    predictions: dict[str, dict[Any, Predictions]],
    arms: dict[str, dict[Any, verdict.Sample]],
    seed: int = verdict.SEED,
) -> Ensemble | None:
    """The ensemble and shared errors of one verdict's strategies; None with fewer than two that have
    predictions. `predictions`: label -> replicate -> Predictions; `arms`: the verdict's samples."""
    members = [label for label, _ in decision.ranking if predictions.get(label)]
    if len(members) < 2:
        return None
    by_seed = members_by_seed({label: predictions[label] for label in members})
    shared = [shared_errors(a, b, by_seed) for a, b in combinations(members, 2)] if by_seed else []
    best, comparison = decision.ranking[0][0], None
    if by_seed:
        samples = {}
        for s, runs in by_seed.items():
            first = runs[members[0]]
            mean = np.mean([p.probs for p in runs.values()], axis=0)
            correct = (mean.argmax(axis=1) == first.targets).astype(float)
            samples[s] = verdict.Sample(float(correct.mean()), first.items, correct)
        comparison = verdict.compare(NAME, samples, best, arms[best], np.random.default_rng(seed))
        comparison.p_holm = comparison.p  # one comparison per group: nothing to correct for
    return Ensemble(decision.context, members, best, comparison, shared)
