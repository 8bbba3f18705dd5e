"""What a report says beside its statistics: the command that adds seeds to the runs it read, and what the
verdict could not include (runs that did not finish, strategies with no finished run)."""

from __future__ import annotations

import shlex
from pathlib import Path

from tlbench.analysis.collect import Found, counts
from tlbench.analysis.markdown import code, md
from tlbench.analysis.verdict import GroupVerdict

SEED_KEY = "seed"
STRATEGY_KEY = "strategy"
FAIR, RACE = "fair", "race"  # hydra.sweeper.mode values whose rounds a plain grid would not rebuild
RACE_MAX_SEEDS = "hydra.sweeper.race.max_seeds"
SWEEP_CONFIG = "multirun.yaml"  # Hydra writes it into a sweep folder: there re-running skips finished runs
ONE_SEED_TO = (
    3  # seeds to suggest after one: the fewest that give a between-seed SD on two degrees of freedom
)
MAX_SUGGESTED = 20  # beyond this many seeds, more seeds is not the advice (the report says how many it takes)


def hydra_overrides(folder: Path) -> list[str]:
    """A run folder's command-line overrides as Hydra saved them (.hydra/overrides.yaml)."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    import yaml  # PyYAML comes with OmegaConf

    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def run_overrides(found: Found) -> list[list[str]]:
    """Every run folder's overrides (finished ones from results.json, the others from .hydra/)."""
    finished = [
        list(map(str, r.results.get("overrides") or [])) or hydra_overrides(r.path) for r in found.runs
    ]
    return finished + [hydra_overrides(p.path) for p in found.unfinished]


def values_by_key(overrides: list[list[str]]) -> dict[str, list[str]]:
    """key -> the values its runs used, in first-seen order (`strategy=freeze` → {"strategy": ["freeze"]})."""
    values: dict[str, list[str]] = {}
    for run in overrides:
        for override in run:
            key, _, value = override.partition("=")
            if value and value not in values.setdefault(key, []):
                values[key].append(value)
    return values


def sweeper_command(found: Found, seeds: int) -> str | None:
    """For a sweep the tlbench sweeper ran as fair or race: the same command again, with more seeds where
    that mode takes them (fair: the `seed=` list, run at each strategy's chosen values; race: a higher
    hydra.sweeper.race.max_seeds, so racing decides again where to spend them). None for other sweeps: their
    runs' own overrides rebuild the grid (add_seeds_command)."""
    path = found.root / SWEEP_CONFIG
    if not path.exists():
        return None
    import yaml  # PyYAML comes with OmegaConf

    hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    mode = sweeper.get("mode")
    if mode not in (FAIR, RACE):
        return None
    given = hydra.get("overrides") or {}
    mine = ("hydra.sweep.dir=", "hydra.mode=", f"{SEED_KEY}=", f"{RACE_MAX_SEEDS}=")
    words = [str(o) for o in given.get("task") or [] if not str(o).startswith(mine)]
    words += [str(o) for o in given.get("hydra") or [] if not str(o).startswith(mine)]
    listed = next(
        (str(o).partition("=")[2] for o in given.get("task") or [] if str(o).startswith(f"{SEED_KEY}=")),
        str((sweeper.get("params") or {}).get(SEED_KEY) or ""),
    )
    pool = [int(v) for v in listed.split(",") if v.strip().lstrip("-").isdigit()]
    if pool or mode == FAIR:  # racing without a seed list draws 0 … max_seeds−1 itself
        candidate = 0
        while len(pool) < seeds:
            pool += [candidate] if candidate not in pool else []
            candidate += 1
        words.append(f"{SEED_KEY}={','.join(map(str, pool))}")
    if mode == RACE:
        most = int((sweeper.get("race") or {}).get("max_seeds") or 0)
        words.append(f"{RACE_MAX_SEEDS}={max(seeds, most)}")
    words.append(f"hydra.sweep.dir={found.root}")
    return " ".join(["python -m tlbench.train -m", *map(shlex.quote, words)])


def add_seeds_command(found: Found, seeds: int) -> str:
    """The multirun that brings these runs to `seeds` seeds with every strategy: the runs' own overrides,
    each key with the values its runs used, and only the seeds still to run (a seed run without a `seed=`
    override has no seed in its folder name: naming it again would run it twice)."""
    if (same_sweep := sweeper_command(found, seeds)) is not None:
        return same_sweep
    values = values_by_key(run_overrides(found))
    overridden = {int(v) for v in values.pop(SEED_KEY, []) if v.isdigit()}
    if STRATEGY_KEY not in values:  # runs started without overrides (the Python API): their strategies
        values[STRATEGY_KEY] = list(dict.fromkeys(run.strategy for run in found.runs))
    strategies = set(values[STRATEGY_KEY])
    finished: dict[int, set[str]] = {}
    for run in found.runs:
        if isinstance(seed := run.params.get(SEED_KEY), int):
            finished.setdefault(seed, set()).add(run.strategy)
    done = {seed for seed, ran in finished.items() if ran >= strategies}
    wanted, candidate = [], 0
    while len(done) + len(wanted) < seeds:
        if candidate not in done and (candidate in overridden or candidate not in finished):
            wanted.append(candidate)
        candidate += 1
    words = [f"{key}={','.join(v)}" for key, v in values.items()]
    words.append(f"{SEED_KEY}={','.join(map(str, wanted))}")
    if (found.root / SWEEP_CONFIG).exists():  # the same folder, whatever hydra.sweep.dir named it
        words.append(f"hydra.sweep.dir={found.root}")
    return " ".join(["python -m tlbench.train -m", *map(shlex.quote, words)])


def seeds_to_suggest(decision: GroupVerdict) -> int | None:
    """How many seeds in all to suggest for a verdict that names no winner: 3 after one seed, else the
    estimate that would separate the tied strategies when it is a modest number; None: no suggestion."""
    if decision.winner is not None or len(decision.ranking) < 2:
        return None
    if decision.one_seed:
        return ONE_SEED_TO
    counts = [n for n in decision.seeds_to_separate.values() if isinstance(n, int)]
    ran = max((len(c.seeds) for c in decision.comparisons), default=0)
    wanted = max(counts, default=0)
    return wanted if ran < wanted <= MAX_SUGGESTED else None


def add_seeds(found: Found, seeds: int) -> str:
    """The sentence (Markdown) that tells how to add seeds, with the command."""
    where = (
        "finished runs are found and skipped"
        if (found.root / SWEEP_CONFIG).exists()
        else "into a new sweep folder; report over both folders' parent"
    )
    if not all(run.results.get("overrides") for run in found.runs):
        where += "; add the settings of the runs that recorded no overrides"
    return f"To add seeds ({seeds} in all; {where}): {code(add_seeds_command(found, seeds))}"


def not_in_verdict(found: Found) -> str | None:
    """What the verdicts leave out, in one sentence, or None when every run finished."""
    if not found.unfinished:
        return None
    states = ", ".join(f"{n} {state}" for state, n in counts(found).items() if state != "complete" and n)
    text = f"Not in the verdict: {states} (listed below)"
    absent = strategies_without_runs(found)
    if absent:
        text += f"; no run of {', '.join(map(md, absent))} finished, so it is in no comparison"
    return text + "."


def strategies_without_runs(found: Found) -> list[str]:
    """Strategies named by unfinished runs' overrides of which no run finished: absent from every verdict."""
    finished = {run.strategy for run in found.runs}
    named = values_by_key([hydra_overrides(p.path) for p in found.unfinished]).get(STRATEGY_KEY, [])
    return [s for s in named if s not in finished]
