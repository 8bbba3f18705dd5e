"""tlbench's sweeper in rounds (run/rounds.py, fair.py, race.py; analysis/tuning.py, racing.py), fast: the
racing rule and the tuning choice table by table, then whole sweeps of the real sweeper with a stand-in
launcher that writes, for each job, the results.json a run would (its accuracy a known function of its
settings) instead of training. The sweeper through Hydra with real training: test_sweep.py (grid) and
test_fair_sweep.py (fair: SIGTERM in either round, joblib)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import REPO
from tlbench.analysis import collect, racing, tuning
from tlbench.analysis.verdict import seeds_needed
from tlbench.run import jobdirs, modes, rounds

# --- the racing rule ------------------------------------------------------------------------------------

TWO = ["full", "partial"]
TEST_IMAGES = "no number of seeds would: the test images alone leave more uncertainty than the difference"
RULE = [
    # winner, tied, seeds_to_separate, seeds run per strategy, max seeds -> action, strategies getting a seed
    ("full", ["full"], {}, {"full": 2, "freeze": 2}, 6, racing.DECIDED, ()),
    (None, TWO, {"partial": 4}, {"full": 2, "partial": 2, "freeze": 2}, 6, racing.MORE, ("full", "partial")),
    (None, TWO, {"partial": None}, {"full": 1, "partial": 1}, 6, racing.MORE, ("full", "partial")),
    (None, TWO, {"partial": 40}, {"full": 2, "partial": 2}, 6, racing.HOPELESS, ()),
    (None, TWO, {"partial": TEST_IMAGES}, {"full": 2, "partial": 2}, 6, racing.HOPELESS, ()),
    (None, TWO, {"partial": "no difference to separate"}, {"full": 3, "partial": 3}, 6, racing.HOPELESS, ()),
    (None, TWO, {"partial": 5}, {"full": 6, "partial": 6}, 6, racing.AT_MAX, ()),
    # of two strategies tied with the best only one can be separated: it and the best get another seed
    (
        None,
        [*TWO, "lpft"],
        {"partial": 3, "lpft": 90},
        {"full": 2, "partial": 2, "lpft": 2},
        6,
        racing.MORE,
        TWO,
    ),
    # the best is at the maximum already, the runner-up is not: only the runner-up catches up
    (None, TWO, {"partial": 5}, {"full": 6, "partial": 4}, 6, racing.MORE, ("partial",)),
]


@pytest.mark.parametrize(("winner", "tied", "needed", "seeds", "most", "action", "add_to"), RULE)
def test_racing_rule(winner, tied, needed, seeds, most, action, add_to):
    step = racing.next_step(winner, tied, needed, seeds, most)
    assert (step.action, step.add_to) == (action, tuple(add_to)), step.reason


def test_the_rule_reads_seeds_needed_as_the_verdict_computes_it():
    # A clear difference with little spread: a few seeds separate; one the test images drown: none do.
    assert (
        racing.next_step(None, ["a", "b"], {"b": seeds_needed(0.05, 0.02)}, {"a": 2, "b": 2}, 6).action
        == racing.MORE
    )
    hopeless = seeds_needed(0.01, 0.02, image_var=0.01**2)
    assert racing.next_step(None, ["a", "b"], {"b": hopeless}, {"a": 2, "b": 2}, 6).action == racing.HOPELESS


# --- tuning decisions -----------------------------------------------------------------------------------


def finished(folder: Path, best_val: float, lr_scale: float = 1.0, monitor: str = "val/acc") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"trainer": {"monitor": monitor}, "strategy": {"head_lr": 1e-3, "lr_scale": lr_scale}}
    results = {"status": "complete", "best_val": best_val, "config": config, "params": {}, "metrics": {}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder.name


def cell_of(tmp_path: Path, scores: dict[str, float | None], monitor: str = "val/acc") -> tuning.Cell:
    candidates = []
    for scale, value in scores.items():
        name = f"tune/s{scale}"
        if value is not None:
            finished(tmp_path / name, value, float(scale), monitor)
        candidates.append(tuning.Candidate({tuning.LR_SCALE: scale}, [name]))
    return tuning.Cell("strategy=full", ["strategy=full"], candidates)


@pytest.mark.parametrize(
    ("scores", "monitor", "chosen", "note"),
    [
        ({"0.2": 0.6, "1": 0.8, "5": 0.7}, "val/acc", "1", ""),
        ({"0.2": 0.6, "1": 0.7, "5": 0.8}, "val/acc", "5", "strategy.lr_scale=5 is the highest value tried"),
        ({"0.2": 0.3, "1": 0.5, "5": 0.4}, "val/loss", "0.2", "the lowest value tried"),  # a loss: the least
        ({"0.2": 0.7, "1": 0.8, "5": 0.8}, "val/acc", "1", ""),  # a tie: the first listed
        ({"0.2": 0.8, "1": 0.8, "5": 0.8}, "val/acc", "0.2", "every value tried scored the same"),
        ({"0.2": None, "1": math.nan, "5": 0.5}, "val/acc", "5", "highest"),  # unfinished, diverged: never
        ({"0.2": None, "1": None}, "val/acc", None, ""),
    ],
)
def test_tuning_chooses_by_the_monitored_validation_metric(tmp_path, scores, monitor, chosen, note):
    [choice] = tuning.decide(tmp_path, [cell_of(tmp_path, scores, monitor)])
    assert (choice.chosen.setting[tuning.LR_SCALE] if choice.chosen else None) == chosen
    assert note in choice.note


def test_tuning_runs_stay_out_of_the_sweeps_verdict(tmp_path: Path):
    finished(tmp_path / "strategy=full,seed=0", 0.9)
    cell = cell_of(tmp_path, {"1": 0.8, "5": 0.7})
    tuning.write_plan(tmp_path, "val/acc", [cell])
    assert [r.path.name for r in collect.find_runs(tmp_path).runs] == ["strategy=full,seed=0"]
    assert len(collect.find_runs(tmp_path / tuning.TUNE_DIR).runs) == 2  # reported when asked for
    (tmp_path / "tune" / "s9").mkdir()
    (tmp_path / "tune" / "s9" / "error.txt").write_text("Traceback ...\nValueError: diverged\n")
    assert [p.path.name for p in collect.find_runs(tmp_path).failed] == ["s9"]  # what went wrong is listed


# --- whole sweeps: the real sweeper, a stand-in launcher -----------------------------------------------

BASE = [0.6, 0.62, 0.61, 0.63, 0.6, 0.6]  # test accuracy of a seed's training subset, for every strategy
NOISE = [0.01, 0.03, 0.015, 0.025, 0.02, 0.02]  # how much full gains over partial at each seed


def accuracy(strategy: str, lr_scale: float, seed: int) -> tuple[float, float]:
    """A known landscape. Validation: each strategy has its best lr_scale. Test: full leads partial by
    0.02 on average but unevenly over seeds (four seeds tell them apart, two do not); freeze trails full
    by exactly 0.2 at every seed (told apart at once)."""
    best = {"freeze": 5.0, "partial": 1.0, "lpft": 1.0, "full": 0.2}[strategy]
    val = 0.9 - 0.1 * abs(math.log(lr_scale / best))
    gain = {"freeze": NOISE[seed % 6] - 0.2, "partial": 0.0, "lpft": 0.0, "full": NOISE[seed % 6]}[strategy]
    return val, BASE[seed % 6] + gain


def fake_run(run_dir: Path, strategy: str, lr_scale: float, seed: int, calls: list[str]) -> float:
    """What a run leaves for the report (results.json); a finished folder is skipped, as run_job does."""
    calls.append(run_dir.name)
    if (run_dir / "results.json").exists():
        return 0.0
    if os.environ.get("FAKE_INTERRUPT") == run_dir.name:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "interrupted.txt").write_text("interrupted by SIGTERM\n")  # what a signalled job leaves
        return 0.0
    val, test = accuracy(strategy, lr_scale, seed)
    params = {"data": "d", "backbone": "b", "strategy": strategy, "seed": seed, "per_class": None}
    config = {"trainer": {"monitor": "val/acc"}, "strategy": {"head_lr": 1e-3, "lr_scale": lr_scale}}
    metrics = {"test/acc": test, "val/acc": val}
    results = {"status": "complete", "params": params, "metrics": metrics, "best_val": val, "config": config}
    ran(run_dir, [])  # .hydra/overrides.yaml comes from the launcher below
    (run_dir / "results.json").write_text(json.dumps(results))
    return val


def ran(folder: Path, overrides: list[str]) -> None:
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    if overrides:
        (folder / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))  # JSON is YAML


class FakeLauncher:
    """Runs each job of a batch at once in this process: its folder from the job's hydra.sweep.subdir,
    its overrides saved as Hydra saves them, the stand-in run instead of training."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir, self.calls = sweep_dir, []

    def launch(self, batch, initial_job_idx: int):
        returns = []
        for job in batch:
            task = [o for o in job if not o.startswith("hydra.")]
            pairs = dict(map(jobdirs.split, job))
            run_dir = self.sweep_dir / pairs["hydra.sweep.subdir"].strip("'")
            ran(run_dir, task)
            strategy, scale = pairs.get("strategy", "partial"), float(pairs.get("strategy.lr_scale", 1))
            value = fake_run(run_dir, strategy, scale, int(pairs.get("seed", 0)), self.calls)
            returns.append(SimpleNamespace(return_value=value))
        return returns


def strategy_yaml(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "strategy" / f"{name}.yaml").read_text())


def fake_sweeper(tmp_path: Path, mode: str, params: dict, **settings) -> modes.TlbenchSweeper:
    """tlbench's sweeper as Hydra would set it up, but with the stand-in launcher and no config composing."""
    sweeper = modes.TlbenchSweeper(params=params, mode=mode, **settings)
    hydra = {
        "sweep": {"dir": str(tmp_path / "sweep")},
        "job": {"config": {"override_dirname": {"exclude_keys": ["sweep"]}}},
    }
    sweeper.config = OmegaConf.create({"hydra": hydra, "trainer": {"monitor": "val/acc"}})
    sweeper.launcher = FakeLauncher(tmp_path / "sweep")
    sweeper.validate_batch_is_legal = lambda batch: None
    sweeper.parser = OverridesParser.create
    sweeper.job_config = lambda job: OmegaConf.create(
        {"strategy": strategy_yaml(rounds.value_of(job, "strategy"))}
    )
    return sweeper


FAIR = {"strategy": "freeze,partial,full", "seed": "0,1"}
TUNE = {"params": {"strategy": {"lr_scale": "0.2,0.45,1,2.2,5"}}, "seeds": "1000"}


def test_fair_tunes_each_strategy_on_validation_then_compares_at_its_rate(tmp_path: Path):
    sweeper = fake_sweeper(tmp_path, "fair", FAIR, tune=TUNE)
    sweeper.sweep([])
    sweep_dir = sweeper.sweep_dir

    assert len(sweeper.launcher.calls) == 15 + 6  # five scales × three strategies, two seeds × three
    chosen = json.loads(tuning.plan_path(sweep_dir).read_text())["chosen"]
    expected = (("freeze", "5"), ("partial", "1"), ("full", "0.2"))
    assert chosen == {f"strategy={s}": {tuning.LR_SCALE: v} for s, v in expected}
    compared = sorted(p.parent.name for p in sweep_dir.glob("*/results.json"))
    assert compared == sorted(
        f"strategy={s},strategy.lr_scale={v},seed={n}" for s, v in expected for n in (0, 1)
    )
    assert len(collect.find_runs(sweep_dir).runs) == 6  # the verdict sees the compared runs alone
    section = "\n".join(tuning.section(sweep_dir))
    assert "strategy.lr_scale=5 is the highest value tried; widen the grid on that side" in section
    assert "strategy.lr_scale=0.2 is the lowest value tried" in section
    assert "| strategy=partial | strategy.lr_scale=1 | 0.001 | 0.9000 |" in section

    sweeper = fake_sweeper(tmp_path, "fair", FAIR, tune=TUNE)
    sweeper.sweep([])  # again: the same decisions from disk; every job skips, no new folder
    assert sweeper.launcher.calls and all(c in compared or "lr_scale" in c for c in sweeper.launcher.calls)
    assert sorted(p.parent.name for p in sweep_dir.glob("*/results.json")) == compared


def test_the_tuning_figure_has_a_panel_per_setting_and_a_line_per_strategy(tmp_path: Path):
    """Strategies are compared within one data size (or backbone): a panel each, the strategy's colour
    the same in every panel, so 10 strategies × 2 sizes stay readable."""
    from matplotlib import pyplot as plt

    params = {"strategy": "freeze,partial", "data.per_class": "50,300", "seed": "0"}
    sweeper = fake_sweeper(tmp_path, "fair", params, tune=TUNE)
    sweeper.sweep([])
    cells = [c.name for c in tuning.read_plan(sweeper.sweep_dir)]
    panels = {tuning.panel_and_line(c) for c in tuning.read_plan(sweeper.sweep_dir)}
    assert panels == {(f"data.per_class={n}", s) for n in (50, 300) for s in ("freeze", "partial")}, cells
    figure = plt.imread(tuning.plot(sweeper.sweep_dir, tmp_path))
    assert figure.shape[1] > 1.5 * figure.shape[0]  # two panels side by side


def test_a_per_strategy_value_is_tried_only_where_it_changes_something(tmp_path: Path):
    tune = {"params": {"strategy": {"lr_scale": "0.5,2", "bn": "eval,train"}}}
    sweeper = fake_sweeper(tmp_path, "fair", {"strategy": "freeze,lpft,full", "seed": "0"}, tune=tune)
    sweeper.sweep([])
    cells = json.loads(tuning.plan_path(sweeper.sweep_dir).read_text())["cells"]
    tried = {c["name"]: [x["setting"] for x in c["candidates"]] for c in cells}
    for frozen_somewhere in ("strategy=freeze", "strategy=lpft"):  # lpft's linear probe freezes the trunk
        assert {(s["strategy.lr_scale"], s["strategy.bn"]) for s in tried[frozen_somewhere]} == {
            (x, b) for x in ("0.5", "2") for b in ("eval", "train")
        }
    assert tried["strategy=full"] == [
        {"strategy.lr_scale": "0.5"},
        {"strategy.lr_scale": "2"},
    ]  # nothing frozen


def test_no_round_starts_after_an_interrupted_one_and_running_again_finishes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FAKE_INTERRUPT", "strategy=partial,strategy.lr_scale=1")
    sweeper = fake_sweeper(tmp_path, "fair", FAIR, tune=TUNE)
    sweeper.sweep([])
    sweep_dir = sweeper.sweep_dir
    assert len(sweeper.launcher.calls) == 15 and not list(
        sweep_dir.glob("*/results.json")
    )  # no compare round
    planned = jobdirs.read_plan(sweep_dir)
    assert len(planned) == 15 and all(p.parent.name == tuning.TUNE_DIR for p in planned)  # "not started"

    monkeypatch.delenv("FAKE_INTERRUPT")
    (
        sweep_dir / "tune" / "strategy=partial,strategy.lr_scale=1" / "interrupted.txt"
    ).unlink()  # a restart does
    sweeper = fake_sweeper(tmp_path, "fair", FAIR, tune=TUNE)
    sweeper.sweep([])
    assert len(sweeper.launcher.calls) == 21 and len(list(sweep_dir.glob("*/results.json"))) == 6


RACE = {"strategy": "freeze,partial,full"}


def test_racing_adds_seeds_only_where_the_verdict_is_undecided(tmp_path: Path):
    sweeper = fake_sweeper(tmp_path, "race", RACE, race={"initial_seeds": 2, "max_seeds": 6, "step": 1})
    sweeper.sweep([])
    sweep_dir = sweeper.sweep_dir

    runs = sorted(p.parent.name for p in sweep_dir.glob("*/results.json"))
    count = {s: sum(r.startswith(f"strategy={s},") for r in runs) for s in ("freeze", "partial", "full")}
    # Two seeds each; freeze is behind at once and gets no more; full and partial get a seed a round until
    # four seeds separate them (the paired t-test over seeds: no predictions.csv here).
    assert count == {"freeze": 2, "partial": 4, "full": 4}
    assert len(sweeper.launcher.calls) == 10  # every job ran once
    section = "\n".join(racing.section(sweep_dir))
    assert "| all | 10 | 18 | decided: full is separated from every other | full wins |" in section

    again = fake_sweeper(tmp_path, "race", RACE, race={"initial_seeds": 2, "max_seeds": 6, "step": 1})
    again.sweep([])  # the same rounds replayed from disk, nothing new
    assert sorted(again.launcher.calls) == sorted(sweeper.launcher.calls)
    assert sorted(p.parent.name for p in sweep_dir.glob("*/results.json")) == runs


def test_a_race_stopped_in_a_later_round_continues_where_it_stopped(tmp_path: Path, monkeypatch):
    """A signal in round 2 (partial's third seed): no further round starts; the same command again runs
    only that job and the rounds after it, and ends with the runs of an uninterrupted race."""
    race = {"initial_seeds": 2, "max_seeds": 6, "step": 1}
    monkeypatch.setenv("FAKE_INTERRUPT", "strategy=partial,seed=2")
    stopped = fake_sweeper(tmp_path, "race", RACE, race=race)
    stopped.sweep([])
    sweep_dir = stopped.sweep_dir
    assert len(stopped.launcher.calls) == 8  # rounds 1 (6 jobs) and 2 (partial and full), nothing after
    assert not (sweep_dir / "strategy=partial,seed=2" / "results.json").exists()

    monkeypatch.delenv("FAKE_INTERRUPT")
    (sweep_dir / "strategy=partial,seed=2" / "interrupted.txt").unlink()  # a restart does
    again = fake_sweeper(tmp_path, "race", RACE, race=race)
    again.sweep([])
    ran_twice = [name for name in again.launcher.calls if name in stopped.launcher.calls]
    finished_before = {n for n in stopped.launcher.calls if (sweep_dir / n / "results.json").exists()}
    assert set(ran_twice) - {"strategy=partial,seed=2"} <= finished_before  # replayed from disk, skipped
    runs = sorted(p.parent.name for p in sweep_dir.glob("*/results.json"))
    count = {s: sum(r.startswith(f"strategy={s},") for r in runs) for s in ("freeze", "partial", "full")}
    assert count == {"freeze": 2, "partial": 4, "full": 4}  # as in the race that was never stopped


def test_racing_stops_where_more_seeds_cannot_separate_within_the_maximum(tmp_path: Path):
    sweeper = fake_sweeper(tmp_path, "race", RACE, race={"initial_seeds": 2, "max_seeds": 4, "step": 1})
    sweeper.sweep([])  # two seeds say ~5 are needed
    assert len(sweeper.launcher.calls) == 6
    section = "\n".join(racing.section(sweeper.sweep_dir))
    assert "| all | 6 | 12 | more seeds cannot help" in section and "more than race.max_seeds=4" in section


def test_racing_compares_with_a_fixed_grid(tmp_path: Path):
    grid = fake_sweeper(tmp_path / "grid", "grid", {**RACE, "seed": "0,1,2,3,4,5"})
    grid.sweep([])
    race = {"initial_seeds": 2, "max_seeds": 6, "step": 1, "compare_to": str(grid.sweep_dir)}
    racer = fake_sweeper(tmp_path, "race", RACE, race=race)
    racer.sweep([])
    section = "\n".join(racing.section(racer.sweep_dir))
    assert (
        "| all | 10 | 18 | decided: full is separated from every other | full wins | full wins: the same |"
        in section
    )


def test_the_report_says_when_racing_reached_another_verdict_than_the_fixed_grid(tmp_path: Path):
    grid = fake_sweeper(tmp_path / "grid", "grid", {**RACE, "seed": "0,1,2,3,4,5"})
    grid.sweep([])  # six seeds: full wins
    race = {"initial_seeds": 2, "max_seeds": 4, "step": 1, "compare_to": str(grid.sweep_dir)}
    racer = fake_sweeper(tmp_path, "race", RACE, race=race)
    racer.sweep([])  # stopped after two seeds: full and partial cannot be told apart
    section = "\n".join(racing.section(racer.sweep_dir))
    assert "| full, partial cannot be told apart | full wins: **differs** |" in section
