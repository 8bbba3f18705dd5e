"""How the report counts and qualifies in words: plurals from the runs' own numbers, what one seed can
tell, and why two strategies are not told apart. Sentences only; the statistics are verdict.py's."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tlbench.analysis.markdown import md

if TYPE_CHECKING:
    from tlbench.analysis.verdict import Comparison

ONE_SEED = (
    "one seed's interval holds only how its test images were drawn, not training randomness "
    "(initialisation, data order, augmentation)"
)


def plural(n: int, word: str) -> str:
    """`1 seed`, `2 seeds`: every count in the report's sentences is the runs' own number."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def one_seed_verdict(best: str, gaps: str, how: str, has_interval: bool) -> str:
    """The verdict where every comparison with the best ran on one seed: no winner, and why not."""
    measured = ONE_SEED if has_interval else "one seed and no predictions files give no interval"
    return f"one seed: {best} has the best mean ({gaps}) [{how}]; {measured}: it cannot show a winner"


def seed_counts(comparisons: Iterable[Comparison]) -> str:
    """`3 seeds`, or `2–3 seeds` where strategies share different numbers of seeds."""
    counts = sorted({len(c.seeds) for c in comparisons})
    return plural(counts[0], "seed") if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds"


def why_not_separated(c: Comparison, needed: int | str | None) -> str:
    """Why a strategy is not shown to be behind the best, and what would tell them apart."""
    if not c.seeds:
        return "no seed in common: run the same seeds for both"
    if c.one_seed:
        return "one seed: its interval holds test-image sampling only, not training randomness"
    if c.separated and c.diff <= 0:
        return (
            f"on the {plural(len(c.seeds), 'seed')} both ran, {md(c.b)} is ahead: the means cover other seeds"
        )
    if isinstance(needed, int):
        more = needed - len(c.seeds)
        if more > 0:
            return f"~{plural(more, 'more seed')} ({needed} in all) would separate them at this variance"
        return (
            f"the seed variance suggests {needed} would do, yet the interval over these "
            f"{plural(len(c.seeds), 'seed')} includes 0: add seeds"
        )
    return needed or "no variance to extrapolate from"
