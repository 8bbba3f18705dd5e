"""Seed racing (`hydra.sweeper.mode=race`), decided and reported. The rule (`next_step`): a group (data ×
backbone × data size, as the verdict groups runs) that has a winner is decided; else, if some strategy tied
with the best could be separated from it within `max_seeds` seeds (verdict.seeds_needed), the best and those
strategies get more seeds; else more seeds cannot help (the test set is too small for the difference, or
the estimate exceeds the maximum); and no strategy runs more than `max_seeds` seeds. Strategies already
separated from the best get no more runs. Pure: run/race.py launches, the report re-reads the runs.

race.json (written by the sweeper) lists each group's run folders; the report recomputes each group's
verdict from them with the same analysis as the sweep's verdict, so the two sections never disagree."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlbench.analysis import verdict
from tlbench.analysis.collect import Run, find_runs
from tlbench.analysis.markdown import code, md, table
from tlbench.analysis.summary import analyse
from tlbench.results.files import read_results, write_atomic

RACE_FILE = "race.json"
DECIDED, MORE, HOPELESS, AT_MAX = "decided", "more seeds", "more seeds cannot help", "at the maximum"


@dataclass(frozen=True)
class Step:
    action: str  # DECIDED | MORE | HOPELESS | AT_MAX
    reason: str
    add_to: tuple[str, ...] = ()  # the strategies that get another seed (MORE only)


def next_step(
    winner: str | None,
    tied: Sequence[str],
    needed: Mapping[str, int | str | None],
    seeds_run: Mapping[str, int],
    max_seeds: int,
) -> Step:
    """What racing does next with one group, from its verdict (winner, tied, seeds_to_separate) and the
    seeds each strategy has run."""
    if winner is not None or len(tied) < 2:
        return Step(DECIDED, f"{winner or (tied[0] if tied else 'nothing')} is separated from every other")
    best = tied[0]
    if min(seeds_run.get(s, 0) for s in tied) >= max_seeds:
        return Step(
            AT_MAX, f"{', '.join(tied)} cannot be told apart after {max_seeds} seeds (race.max_seeds)"
        )
    helpable, why = [], []
    for other in tied[1:]:
        n = needed.get(other)
        if n is None or (isinstance(n, int) and n <= max_seeds):  # None: one seed, no spread yet to judge by
            helpable.append(other)
        elif isinstance(n, int):
            why.append(f"{other}: ~{n} seeds would be needed, more than race.max_seeds={max_seeds}")
        else:
            why.append(f"{other}: {n}")
    if not helpable:
        return Step(HOPELESS, "; ".join(why))
    grows = [s for s in (best, *helpable) if seeds_run.get(s, 0) < max_seeds]
    return Step(
        MORE, f"{best} vs {', '.join(helpable)} undecided; more seeds could separate them", tuple(grows)
    )


def group_verdict(runs: list[Run]) -> verdict.GroupVerdict | None:
    """The verdict over one group's finished runs (None without any), as the sweep's report computes it."""
    verdicts = analyse(runs).verdicts if runs else []
    return verdicts[0] if len(verdicts) == 1 else None


def finished_runs(sweep_dir: Path, folders: Sequence[str]) -> list[Run]:
    runs = []
    for folder in folders:
        results = read_results(sweep_dir / folder)
        if results is not None:
            runs.append(Run(sweep_dir / folder, results))
    return runs


def seeds_by_label(runs: list[Run], decision: verdict.GroupVerdict) -> dict[str, int]:
    from tlbench.analysis.summary import summarize

    return {g.label: len(g.runs) for g in summarize(runs) if g.context == decision.context}


def write_record(sweep_dir: Path, record: dict[str, Any]) -> Path:
    return write_atomic(sweep_dir / RACE_FILE, json.dumps(record, indent=1) + "\n")


def read_record(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((sweep_dir / RACE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("groups"), list) else None


def fixed_grid_verdicts(folder: Path) -> dict[tuple, verdict.GroupVerdict]:
    found = find_runs(folder)
    return {d.context: d for d in analyse(found.runs).verdicts} if found.runs else {}


def same_verdict(a: verdict.GroupVerdict, b: verdict.GroupVerdict) -> bool:
    """The same answer: the same winner, or the same set that cannot be told apart."""
    return a.winner == b.winner and (a.winner is not None or set(a.tied) == set(b.tied))


def answer(d: verdict.GroupVerdict) -> str:
    return f"{d.winner} wins" if d.winner else f"{', '.join(d.tied)} cannot be told apart"


def section(sweep_dir: Path) -> list[str]:
    """The report's racing section (empty when the folder holds no race)."""
    record = read_record(sweep_dir)
    if record is None:
        return []
    max_seeds, strategies = int(record["max_seeds"]), len(record.get("arms", [])) or 1
    compare_to = record.get("compare_to")
    fixed = fixed_grid_verdicts(Path(compare_to)) if compare_to and Path(compare_to).is_dir() else {}
    lines = [
        "## Seed racing",
        "",
        f"Each group started with {record['initial_seeds']} seeds per strategy; a round added "
        f"{record['step']} seed(s) to the best strategy and to each strategy tied with it that the estimated "
        f"seeds to separate (within {max_seeds}, race.max_seeds) could separate; strategies already behind "
        "got no more runs. A group stopped when decided, when more seeds could not help, or at the maximum. "
        f"The fixed grid runs every strategy at {max_seeds} seeds.",
        "",
    ]
    header = ["group", "runs (racing)", "runs (fixed grid)", "stopped", "verdict", "fixed grid's verdict"]
    rows = []
    for group in record["groups"]:
        runs = finished_runs(sweep_dir, group["folders"])
        decision = group_verdict(runs)
        if decision is None:
            rows.append(
                [md(group["name"]), str(len(runs)), str(strategies * max_seeds), "no finished runs", "–", "–"]
            )
            continue
        seeds = seeds_by_label(runs, decision)
        step = next_step(decision.winner, decision.tied, decision.seeds_to_separate, seeds, max_seeds)
        other = fixed.get(decision.context)
        if other is None:
            compared = "no fixed-grid sweep to compare" + (
                "" if compare_to else " (hydra.sweeper.race.compare_to)"
            )
        else:
            compared = (
                f"{md(answer(other))}: {'the same' if same_verdict(decision, other) else '**differs**'}"
            )
        rows.append(
            [
                md(group["name"]),
                str(len(runs)),
                str(len(decision.ranking) * max_seeds),
                md(f"{step.action}: {step.reason}"),
            ]
            + [md(answer(decision)), compared]
        )
    lines += [*table(header, rows), ""]
    if compare_to:
        lines += [f"Fixed grid: {code(compare_to)}.", ""]
    return lines
