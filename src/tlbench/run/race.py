"""`hydra.sweeper.mode=race` (`sweep=race`): seeds only where they can change the answer. Round 1 runs
race.initial_seeds seeds of every strategy in every group (the grid's combinations without strategy and
seed); after each round every group's verdict (the report's, from the finished runs on disk) goes through
analysis/racing.next_step, which gives the undecided groups' leading strategies another race.step seeds,
until every group is decided, hopeless or at race.max_seeds. The seeds are the grid's `seed` values when it
lists them, else 0 … max_seeds−1. Run again, it replays the rounds from disk (finished jobs skip)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlbench.analysis import racing
from tlbench.run import jobdirs
from tlbench.run.fair import SEED, split_seed
from tlbench.run.rounds import Axis, Job, RoundSweeper, grid

log = logging.getLogger("tlbench")

ARM = "strategy"


@dataclass
class Group:
    name: str
    overrides: Job
    seeds: dict[str, int]  # arm override (`strategy=full`) -> seeds to run
    folders: dict[tuple[str, str], Path] = field(default_factory=dict)  # (arm, seed override) -> folder
    step: racing.Step | None = None

    @property
    def racing(self) -> bool:
        return self.step is None or self.step.action == racing.MORE


def settings(sweeper: RoundSweeper) -> tuple[int, int, int]:
    initial, most, step = (
        int(sweeper.race.get(k, d)) for k, d in (("initial_seeds", 2), ("max_seeds", 6), ("step", 1))
    )
    if not 1 <= initial <= most or step < 1:
        raise ValueError(
            f"hydra.sweeper.race needs 1 ≤ initial_seeds ({initial}) ≤ max_seeds ({most}) and step ≥ 1 "
            f"({step}): set hydra.sweeper.race.initial_seeds / max_seeds / step"
        )
    return initial, most, step


def judge(sweeper: RoundSweeper, group: Group, arms: list[str], most: int) -> racing.Step:
    """The racing rule on the group's verdict, the strategies named as the verdict names them."""
    folders = [f.relative_to(sweeper.sweep_dir).as_posix() for f in group.folders.values()]
    runs = racing.finished_runs(sweeper.sweep_dir, folders)
    decision = racing.group_verdict(runs)
    if decision is None:
        return racing.Step(racing.HOPELESS, "no finished runs to judge")
    label_of = {}  # verdict label -> arm override, through the runs' folders
    arm_of = {folder: arm for (arm, _), folder in group.folders.items()}
    from tlbench.analysis.summary import summarize

    for g in summarize(runs):
        for run in g.runs:
            label_of[g.label] = arm_of[run.path]
    seeds_run = racing.seeds_by_label(runs, decision)
    step = racing.next_step(decision.winner, decision.tied, decision.seeds_to_separate, seeds_run, most)
    return racing.Step(step.action, step.reason, tuple(label_of[s] for s in step.add_to if s in label_of))


def run(sweeper: RoundSweeper, axes: Sequence[Axis]) -> list[Any]:
    initial, most, step = settings(sweeper)
    seed_values, rest = split_seed(axes)
    arms = next((values for key, values in rest if key == ARM), [])
    if len(arms) < 2:
        raise ValueError(
            "hydra.sweeper.mode=race compares strategies: list two or more, e.g. strategy=freeze,partial,full"
        )
    pool = seed_values or [f"{SEED}={i}" for i in range(most)]
    most = min(most, len(pool))
    others = [(key, values) for key, values in rest if key != ARM]
    name_keys = [k for k, v in others if len(v) > 1] + [ARM, SEED]
    groups = [
        Group(jobdirs.short_name(g, name_keys) or "all", g, {arm: min(initial, most) for arm in arms})
        for g in grid(others)
    ]
    returns, round_number = [], 1
    while True:
        jobs, owners = [], []
        for group in groups:
            if not group.racing:
                continue
            for arm in arms:
                for seed in pool[: group.seeds[arm]]:
                    if (arm, seed) not in group.folders:
                        jobs.append([*group.overrides, arm, seed])
                        owners.append((group, arm, seed))
        if not jobs:
            break
        folders, launched = sweeper.launch(f"race {round_number}", sweeper.sweep_dir, jobs, name_keys)
        returns.append(launched)
        for (group, arm, seed), folder in zip(owners, folders, strict=True):
            group.folders[(arm, seed)] = folder
        write(sweeper, groups, arms, initial, most, step)
        if sweeper.stopped(folders):
            return returns
        for group in (g for g in groups if g.racing):
            group.step = judge(sweeper, group, arms, most)
            log.info(
                "race round %d, %s: %s (%s)", round_number, group.name, group.step.action, group.step.reason
            )
            for arm in group.step.add_to:
                group.seeds[arm] = min(most, group.seeds[arm] + step)
        round_number += 1
    write(sweeper, groups, arms, initial, most, step)
    return returns


def write(
    sweeper: RoundSweeper, groups: list[Group], arms: list[str], initial: int, most: int, step: int
) -> None:
    record = {
        "initial_seeds": initial,
        "max_seeds": most,
        "step": step,
        "arms": arms,
        "compare_to": sweeper.race.get("compare_to"),
        "groups": [
            {
                "name": g.name,
                "overrides": g.overrides,
                "folders": [f.relative_to(sweeper.sweep_dir).as_posix() for f in g.folders.values()],
                "stopped": None if g.step is None or g.racing else f"{g.step.action}: {g.step.reason}",
            }
            for g in groups
        ],
    }
    racing.write_record(sweeper.sweep_dir, record)
