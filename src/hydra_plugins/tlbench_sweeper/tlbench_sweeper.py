"""Registration only: `hydra/sweeper=tlbench` (the sweep presets' default for `-m`). The logic is in
tlbench.run.rounds; Hydra instantiates only plugin classes defined under `hydra_plugins`: hence a subclass."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from tlbench.run.modes import TlbenchSweeper as ModeSweeper


@dataclass
class TuneConf:
    # Per strategy, tried on the validation split before the compared runs (sweep=fair): key -> "v1,v2,...".
    params: dict[str, Any] = field(default_factory=dict)
    # Seeds of the tuning runs, kept apart from the compared seeds so tuning and verdict use other runs.
    seeds: str = "1000"


@dataclass
class RaceConf:
    initial_seeds: int = 2
    max_seeds: int = 6
    step: int = 1  # seeds added per round to each undecided group
    compare_to: str | None = None  # a fixed-grid sweep folder whose verdicts the report compares with


@dataclass
class TlbenchSweeperConf:
    _target_: str = "hydra_plugins.tlbench_sweeper.tlbench_sweeper.TlbenchSweeper"
    max_batch_size: int | None = None
    params: dict[str, Any] | None = None
    mode: str = "grid"  # grid | fair | race
    tune: TuneConf = field(default_factory=TuneConf)
    race: RaceConf = field(default_factory=RaceConf)


class TlbenchSweeper(ModeSweeper):
    """Hydra's grid, launched in rounds through the configured launcher (tlbench.run.rounds)."""


ConfigStore.instance().store(
    group="hydra/sweeper", name="tlbench", node=TlbenchSweeperConf, provider="tlbench"
)
