"""tlbench's Hydra sweeper (`hydra/sweeper=tlbench`, the default for `-m`): Hydra's grid, launched in rounds
through whatever launcher is configured (basic, joblib/gpus, submitit local/slurm), each job in a folder
named by what varies (jobdirs.py). Between rounds it reads the finished runs' results.json and decides the
next round; running the same command again recomputes every decision from disk (finished jobs skip), so a
killed sweep continues where it stopped. No round starts after one a signal interrupted.

    hydra.sweeper.mode=grid   one round: the grid, as Hydra's BasicSweeper runs it
    hydra.sweeper.mode=fair   tune each strategy on validation, then compare at the chosen values (fair.py)
    hydra.sweeper.mode=race   seeds only where the verdict is undecided and more seeds could decide (race.py)
modes.py picks the mode; this module launches rounds and names nothing by mode.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from tlbench.results.files import read_results
from tlbench.run import jobdirs, sweep

log = logging.getLogger("tlbench")

MODES = ("grid", "fair", "race")
Job = list[str]  # one job's overrides, `key=value` each
Axis = tuple[str, list[str]]  # a key and its `key=value` overrides, one per value


def axes_of(overrides: Sequence[str], parser: OverridesParser) -> list[Axis]:
    """Each key with its values, as Hydra's BasicSweeper expands them (a later list of a key replaces an
    earlier one, in the earlier one's place; `range(...)`, `choice(...)`, globs are Hydra's)."""
    found: dict[str, list[str]] = {}
    for override in parser.parse_overrides(list(overrides)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise HydraException(
                    f"hydra/sweeper=tlbench takes lists of values, not {override.input_line}: use a list or "
                    "range(...), or hydra/sweeper=optuna for intervals"
                )
            found[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            found[key] = [f"{key}={override.get_value_element_as_str()}"]
    return list(found.items())


def grid(axes: Sequence[Axis]) -> list[Job]:
    """Every combination, in BasicSweeper's order (the last key varies fastest)."""
    return [list(job) for job in itertools.product(*(values for _, values in axes))]


def flatten(params: Mapping[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """{"strategy": {"bn": "eval,train"}} → {"strategy.bn": "eval,train"}: a dotted key from the command
    line arrives nested."""
    flat: dict[str, str] = {}
    for key, value in (params or {}).items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def value_of(job: Sequence[str], key: str) -> str | None:
    return dict(map(jobdirs.split, job)).get(key)


class RoundSweeper(Sweeper):
    """The sweeper; `hydra_plugins.tlbench_sweeper` registers it (Hydra instantiates plugins only there)."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: Mapping[str, Any] | None = None,
        mode: str = "grid",
        tune: Mapping[str, Any] | None = None,
        race: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"hydra.sweeper.mode={mode!r} is not a mode; choose one of: {', '.join(MODES)}")
        self.max_batch_size = max_batch_size
        self.params = flatten(params)
        self.mode = mode
        self.tune = dict(tune or {})
        self.race = dict(race or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    @property
    def sweep_dir(self) -> Path:
        return Path(self.config.hydra.sweep.dir)

    @property
    def excluded(self) -> list[str]:
        """Keys that cannot change a result (train.yaml's override_dirname.exclude_keys)."""
        return list(self.config.hydra.job.config.override_dirname.exclude_keys)

    flatten = staticmethod(flatten)

    def parser(self) -> OverridesParser:
        return OverridesParser.create(config_loader=self.hydra_context.config_loader)

    def job_config(self, job: Sequence[str]) -> DictConfig:
        """The config one job would run with (composed as the launcher will)."""
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(job))

    def sweep(self, arguments: list[str]) -> Any:
        axes = axes_of([f"{k}={v}" for k, v in self.params.items()] + list(arguments), self.parser())
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # the constant settings, as Hydra's
        return self.run_rounds(axes)

    def run_rounds(self, axes: list[Axis]) -> list[Any]:
        """The grid in one round; modes.TlbenchSweeper adds the modes that decide between rounds."""
        return [self.launch("grid", self.sweep_dir, grid(axes))[1]]

    def launch(
        self, round_name: str, parent: Path, jobs: Sequence[Job], name_keys: Sequence[str] | None = None
    ) -> tuple[list[Path], list[JobReturn]]:
        """One round: each job in its folder below `parent` (named by `name_keys`, else by what varies in
        the round), through the launcher, in batches of max_batch_size. Returns the folders (job order) and
        Hydra's job returns."""
        folders = jobdirs.assign(parent, jobs, self.excluded, name_keys)
        if self.user_subdir():  # hydra.sweep.subdir given on the command line: the user names the folders
            folders = [self.user_folder(job, f) for job, f in zip(jobs, folders, strict=True)]
            batch = [list(job) for job in jobs]
        else:
            batch = [
                [*job, jobdirs.subdir_override(self.sweep_dir, f)]
                for job, f in zip(jobs, folders, strict=True)
            ]
        jobdirs.write_plan(self.sweep_dir, round_name, folders, jobs)
        size = self.max_batch_size if self.max_batch_size and self.max_batch_size > 0 else max(1, len(batch))
        log.info("sweep round %r: %d jobs below %s", round_name, len(batch), parent)
        returns: list[JobReturn] = []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            self.validate_batch_is_legal(chunk)  # composition errors before any job starts
            results = self.launcher.launch(chunk, initial_job_idx=self.job_idx)
            self.job_idx += len(chunk)
            for result in results:
                _ = result.return_value  # as BasicSweeper: a job's unexpected exception ends the sweep
            returns += list(results)
            if sweep.round_interrupted(folders[start : start + size]):
                break
        return folders, returns

    def user_subdir(self) -> bool:
        given = OmegaConf.select(self.config, "hydra.overrides.hydra", default=None) or []
        return any(str(o).split("=")[0].strip() == "hydra.sweep.subdir" for o in given)

    def user_folder(self, job: Sequence[str], named: Path) -> Path:
        """The folder the user's hydra.sweep.subdir gives this job (ours where it needs Hydra's runtime)."""
        try:
            return self.sweep_dir / str(self.job_config(job).hydra.sweep.subdir)
        except Exception:  # noqa: BLE001 - e.g. ${hydra.job.num}: only known once the job runs
            return named

    def stopped(self, folders: Sequence[Path]) -> bool:
        """Whether a signal interrupted the round that ran in `folders`: then no further round starts."""
        if sweep.round_interrupted(folders):
            log.error("a job of this round was interrupted: no further round starts (run again to continue)")
            return True
        return False

    @staticmethod
    def results_of(folders: Sequence[Path]) -> list[dict | None]:
        return [read_results(f) for f in folders]
