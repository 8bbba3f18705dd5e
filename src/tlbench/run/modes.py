"""The tlbench sweeper with its modes: grid (rounds.py), fair (fair.py), race (race.py). A module of its own
so that fair and race can build on rounds.py without an import cycle."""

from __future__ import annotations

from typing import Any

from tlbench.run import fair, race
from tlbench.run.rounds import Axis, RoundSweeper


class TlbenchSweeper(RoundSweeper):
    def run_rounds(self, axes: list[Axis]) -> list[Any]:
        if self.mode == "fair":
            return fair.run(self, axes)
        if self.mode == "race":
            return race.run(self, axes)
        return super().run_rounds(axes)
