"""`hydra.sweeper.mode=fair` (`sweep=fair`): tune, then compare. Round 1 runs, for every cell of the grid (its
combinations without the seed: each strategy, × backbone, ... as the grid says), the same tuning grid
(`hydra.sweeper.tune.params`, e.g. strategy.lr_scale over ~25×) at the tuning seeds, into <sweep>/tune/.
The best values per cell on the monitored validation metric (analysis/tuning.decide) are then run at every
requested seed into <sweep>/: the verdict comes from those runs alone. A tuned value that changes nothing
for a strategy is not tried for it (MATTERS), so no run repeats another."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import OmegaConf

from tlbench.analysis import tuning
from tlbench.models.strategies import Strategy, StrategyError
from tlbench.run import jobdirs
from tlbench.run.rounds import Axis, Job, RoundSweeper, axes_of, grid

log = logging.getLogger("tlbench")

SEED = "seed"
# Tuned keys that matter only for some strategies, read from the Strategy value (never its name):
# strategy.bn sets BatchNorm layers of *frozen* stages, so it changes nothing where no stage is ever frozen.
MATTERS: dict[str, Callable[[Strategy], bool]] = {
    "strategy.bn": lambda s: s.start != "all" or s.probe_epochs > 0,
}


def split_seed(axes: Sequence[Axis]) -> tuple[list[str], list[Axis]]:
    """The seed values (empty: the config's seed) and the other axes, which make the cells."""
    seeds = next((values for key, values in axes if key == SEED), [])
    return seeds, [(key, values) for key, values in axes if key != SEED]


def strategy_of(sweeper: RoundSweeper, cell: Sequence[str]) -> Strategy | None:
    """The strategy a cell trains (its composed config); None when it cannot be read (its jobs will say)."""
    try:
        values: Any = OmegaConf.to_container(sweeper.job_config(cell).strategy, resolve=True)
        return Strategy.from_config(values)
    except (StrategyError, ValueError, KeyError, TypeError):
        return None


def applies(key: str, strategy: Strategy | None) -> bool:
    rule = MATTERS.get(key)
    return rule is None or strategy is None or rule(strategy)


def tuning_axes(sweeper: RoundSweeper) -> tuple[list[Axis], list[str]]:
    parser = sweeper.parser()
    params = [f"{k}={v}" for k, v in sweeper.flatten(sweeper.tune.get("params")).items()]
    if not params:
        raise ValueError(
            "hydra.sweeper.mode=fair needs values to tune in hydra.sweeper.tune.params, e.g. "
            "strategy.lr_scale: 0.2,0.45,1,2.2,5 (sweep=fair sets it)"
        )
    seeds = axes_of([f"{SEED}={sweeper.tune.get('seeds', '1000')}"], parser)[0][1]
    return axes_of(params, parser), seeds


def plan_tuning(sweeper: RoundSweeper, cells: list[Job]) -> list[tuple[Job, list[tuple[dict, list[Job]]]]]:
    """Per cell, each tuned setting that matters for its strategy with its jobs (one per tuning seed)."""
    tune_axes, seeds = tuning_axes(sweeper)
    planned = []
    for cell in cells:
        strategy = strategy_of(sweeper, cell)
        kept = [(key, values) for key, values in tune_axes if applies(key, strategy)]
        settings = grid(kept)
        planned.append(
            (cell, [(dict(map(jobdirs.split, s)), [[*cell, *s, seed] for seed in seeds]) for s in settings])
        )
    return planned


def run(sweeper: RoundSweeper, axes: Sequence[Axis]) -> list[Any]:
    seeds, rest = split_seed(axes)
    planned = plan_tuning(sweeper, grid(rest))
    jobs = [job for _, candidates in planned for _, runs in candidates for job in runs]
    folders, tuned = sweeper.launch("tune", sweeper.sweep_dir / tuning.TUNE_DIR, jobs)
    where = dict(zip(map(tuple, jobs), folders, strict=True))
    cells = [
        tuning.Cell(
            jobdirs.short_name(cell, [k for k, _ in rest if len(dict(rest)[k]) > 1]) or "all",
            list(cell),
            [
                tuning.Candidate(
                    setting, [where[tuple(j)].relative_to(sweeper.sweep_dir).as_posix() for j in runs]
                )
                for setting, runs in candidates
            ],
        )
        for cell, candidates in planned
    ]
    monitor = str(OmegaConf.select(sweeper.config, "trainer.monitor", default="val/acc"))
    tuning.write_plan(sweeper.sweep_dir, monitor, cells)
    if sweeper.stopped(folders):
        return [tuned]
    choices = tuning.decide(sweeper.sweep_dir, cells)
    tuning.write_plan(sweeper.sweep_dir, monitor, cells, choices)
    final = []
    for choice in choices:
        if choice.chosen is None:
            log.error(
                "%s: no tuning run finished, so it is not compared (see %s)",
                choice.cell.name,
                tuning.TUNE_DIR,
            )
            continue
        chosen = [f"{k}={v}" for k, v in choice.chosen.setting.items()]
        note = f" ({choice.note})" if choice.note else ""
        log.info("%s: chose %s on %s%s", choice.cell.name, ", ".join(chosen), choice.monitor, note)
        final += [[*choice.cell.overrides, *chosen, *([seed] if seed else [])] for seed in seeds or [None]]
    if not final:
        return [tuned]
    _, compared = sweeper.launch("compare", sweeper.sweep_dir, final)
    return [tuned, compared]
