"""Every sentence of the report follows from the runs: a table of sweeps (1, 2 and 3 seeds, ties, a clear
winner, a missing strategy, a failed run) and what summary.md, the console and summary.json may say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tlbench.analysis import report
from tlbench.results.predictions import write_predictions

N = 100  # test images, the same for every run


def write_run(root: Path, strategy: str, seed: int, wrong: list[int] | range) -> Path:
    """A finished run whose predictions are wrong exactly on the images `wrong`."""
    folder = root / f"seed={seed},strategy={strategy}"
    (folder / ".hydra").mkdir(parents=True)
    results = {
        "status": "complete",
        "overrides": [f"strategy={strategy}", f"seed={seed}", "backbone=resnet18"],
        "params": {"data": "hymenoptera", "backbone": "resnet18", "strategy": strategy, "seed": seed},
        "metrics": {"test/acc": 1 - len(wrong) / N},
        "classes": ["ants", "bees"],
    }
    (folder / "results.json").write_text(json.dumps(results))
    targets = np.arange(N) % 2
    predicted = targets.copy()
    predicted[list(wrong)] = 1 - predicted[list(wrong)]
    probs = np.where(np.arange(2)[None, :] == predicted[:, None], 0.8, 0.2)
    write_predictions(folder, [f"img_{i:03d}.jpg" for i in range(N)], probs, targets, ["ants", "bees"])
    return folder


def write_failed(root: Path, strategy: str, seed: int) -> None:
    folder = root / f"seed={seed},strategy={strategy}"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- strategy={strategy}\n- seed={seed}\n")
    (folder / "error.txt").write_text("Traceback …\nRuntimeError: out of memory\n")


def sweep(root: Path, wrong: dict[str, list], failed: tuple = ()) -> Path:
    for strategy, per_seed in wrong.items():
        for seed, images in enumerate(per_seed):
            if images is not None:
                write_run(root, strategy, seed, images)
    for strategy, seed in failed:
        write_failed(root, strategy, seed)
    return root


CLEAR, CLOSE = range(5), range(45)  # 95 right against 55 right: far apart on any seed
CASES = {
    # name: (wrong images per strategy and seed, failed runs, winner, the verdict says, seeds to suggest)
    "one seed, a gap the test images separate": (
        {"freeze": [CLEAR], "full": [CLOSE]}, (), None, "one seed: freeze has the best mean", 3
    ),
    "two seeds, a clear winner": (
        {"freeze": [CLEAR, range(6)], "full": [CLOSE, range(44)]}, (), "freeze", "over 2 seeds", None
    ),
    "two seeds, a tie": (
        {"freeze": [range(10), range(11, 21)], "full": [range(1, 11), range(10, 21)]},
        (), None, "**freeze**, **full** cannot be told apart", None
    ),
    "three seeds, a clear winner": (
        {"freeze": [CLEAR] * 3, "partial": [range(30)] * 3, "full": [CLOSE] * 3},
        (), "freeze", "over 3 seeds", None
    ),
    "three seeds, identical": (
        {"freeze": [range(20)] * 3, "full": [range(20)] * 3}, (), None, "no difference to separate", None
    ),
    "a missing strategy": (
        {"freeze": [CLEAR, CLEAR], "partial": [CLOSE, CLOSE]},
        (("full", 0), ("full", 1)), "freeze", "no run of full finished, so it is in no comparison", None
    ),
    "a failed run leaves one seed in common": (
        {"freeze": [CLEAR, CLEAR], "full": [CLOSE, None]}, (("full", 1),), None,
        "one seed: freeze has the best mean", 3
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_the_report_claims_what_the_runs_show(tmp_path: Path, case: str):
    wrong, failed, winner, says, suggest = CASES[case]
    root = sweep(tmp_path / "sweep", wrong, failed)
    found = report.find_runs(root)
    analysis = report.analyse(found.runs)  # what report.main writes, without drawing the charts
    console, text = report.verdict_text(analysis, found), report.render_summary_md(found, analysis)
    (decision,) = report.summary_json(found, analysis)["verdict"]

    assert decision["winner"] == winner
    assert says in text and says.replace("**", "") in console
    # One source: the console prints summary.md's verdict sentences, and summary.json holds the same one.
    verdict_line = next(line for line in text.splitlines() if line.startswith("- **resnet18** on"))
    assert verdict_line.replace("**", "") in console.splitlines()
    assert f": {decision['verdict']}." in verdict_line
    # "wins" only where summary.json names a winner, and only over two or more seeds.
    assert (" wins" in verdict_line) == (winner is not None) and (" wins" in console) == (winner is not None)
    for claimed in re.findall(r"over (\d+) seeds", verdict_line):
        assert int(claimed) == min(len(c["seeds"]) for c in decision["comparisons"]) >= 2
    if suggest is None:
        assert decision.get("add_seeds") is None and "To add seeds" not in text
    else:
        command = decision.get("add_seeds") or "(none in summary.json)"
        assert command.endswith("seed=1,2")  # seed 0 finished with every strategy; seed 1 did not
        assert f"To add seeds ({suggest} in all" in text and command in text and command in console
    if failed:
        assert f"Not in the verdict: {len(failed)} failed" in text and "Not in the verdict" in console
    else:
        assert "Not in the verdict" not in text


def test_the_command_to_add_seeds_keeps_the_runs_settings_and_adds_the_seeds(tmp_path: Path):
    from tlbench.analysis.caveats import add_seeds_command

    root = sweep(tmp_path / "sweep", {"freeze": [CLEAR], "full": [CLOSE]}, (("partial", 0),))
    (root / "multirun.yaml").write_text(
        "hydra: {}\n"
    )  # a Hydra sweep folder: re-running it skips finished runs
    command = add_seeds_command(report.find_runs(root), 3)
    assert command == (
        f"python -m tlbench.train -m strategy=freeze,full,partial backbone=resnet18 seed=0,1,2 "
        f"hydra.sweep.dir={root}"
    )
    found = report.find_runs(root)
    assert "finished runs are found and skipped" in report.render_summary_md(
        found, report.analyse(found.runs)
    )


def test_more_seeds_are_counted_in_words_that_match_the_runs():
    from tlbench.analysis.verdict import Comparison
    from tlbench.analysis.wording import why_not_separated

    two = Comparison("a", "b", 0.02, -0.01, 0.05, 0.2, "test", [0, 1], p_holm=0.2, seed_sd=0.01)
    assert why_not_separated(two, 3) == "~1 more seed (3 in all) would separate them at this variance"
    assert why_not_separated(two, 5) == "~3 more seeds (5 in all) would separate them at this variance"
    # The t-approximation can say the seeds run are enough while the bootstrap does not separate them.
    assert "suggests 2 would do, yet the interval over these 2 seeds includes 0: add seeds" in (
        why_not_separated(two, 2)
    )
    none_shared = Comparison("a", "b", float("nan"), None, None, None, "none", [])
    assert why_not_separated(none_shared, "no difference to separate").startswith("no seed in common")


def test_a_crossing_on_one_seed_says_so(tmp_path: Path):
    for per_class, (freeze, full) in {10: (CLEAR, CLOSE), 100: (CLOSE, CLEAR)}.items():
        for strategy, wrong in (("freeze", freeze), ("full", full)):
            folder = write_run(tmp_path, strategy, 0, wrong)
            results = json.loads((folder / "results.json").read_text())
            results["params"]["per_class"] = per_class
            (folder / "results.json").write_text(json.dumps(results))
            folder.rename(tmp_path / f"{folder.name},per_class={per_class}")
    found = report.find_runs(tmp_path)
    text = report.render_summary_md(found, report.analyse(found.runs))
    assert "full overtakes freeze" in text and "one seed per size: test-image sampling only" in text


@pytest.mark.parametrize(
    ("full_wall_time", "legend"),
    [
        (90.0, {"freeze", "full", "dominated"}),  # freeze cheaper and better: no frontier line, full hollow
        (10.0, {"freeze", "full", "frontier of the panel"}),  # full cheaper but worse: a line, none hollow
    ],
)
def test_the_pareto_legend_names_only_what_is_drawn(tmp_path: Path, full_wall_time: float, legend: set):
    from tlbench.analysis import plots
    from tlbench.analysis.summary import pareto, summarize

    for strategy, wrong, wall_time in (("freeze", CLEAR, 30.0), ("full", CLOSE, full_wall_time)):
        folder = write_run(tmp_path, strategy, 0, wrong)
        results = json.loads((folder / "results.json").read_text()) | {"wall_time_s": wall_time}
        (folder / "results.json").write_text(json.dumps(results))
    figure = plots.pareto_figure(pareto(summarize(report.find_runs(tmp_path).runs)))
    (shown,) = figure.legends
    assert {t.get_text() for t in shown.get_texts()} == legend
    drawn_lines = [line for ax in figure.axes for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert bool(drawn_lines) == ("frontier of the panel" in legend)


@pytest.mark.parametrize(
    ("mode", "task", "expected"),
    [
        # fair: the same command, its seed list grown; the chosen rates come from the finished tuning round.
        (
            "fair",
            "[sweep=fair, 'strategy=freeze,full', data.per_class=50]",
            "python -m tlbench.train -m sweep=fair strategy=freeze,full data.per_class=50 "
            "'hydra.sweeper.tune.params.strategy.lr_scale=\"0.2,5\"' seed=0,1,2,3",
        ),
        # race without a seed list: a higher max_seeds, racing spends them where the verdict is open.
        (
            "race",
            "[sweep=race, 'strategy=freeze,full']",
            "python -m tlbench.train -m sweep=race strategy=freeze,full "
            "'hydra.sweeper.tune.params.strategy.lr_scale=\"0.2,5\"' hydra.sweeper.race.max_seeds=7",
        ),
        # race over the user's own seeds: the list grows and so does the maximum.
        (
            "race",
            "[sweep=race, 'strategy=freeze,full', 'seed=10,11', hydra.sweeper.race.max_seeds=2]",
            "python -m tlbench.train -m sweep=race strategy=freeze,full "
            "'hydra.sweeper.tune.params.strategy.lr_scale=\"0.2,5\"' seed=10,11,0,1,2,3,4 "
            "hydra.sweeper.race.max_seeds=7",
        ),
    ],
)
def test_the_command_to_add_seeds_reruns_a_fair_or_race_sweep_as_itself(
    tmp_path: Path, mode: str, task: str, expected: str
):
    """A fair or race sweep's runs carry their chosen rate or their racing round, not the grid the user
    typed: the suggestion re-runs the sweep's own command (finished runs skip), never the runs' overrides."""
    from tlbench.analysis.caveats import add_seeds_command

    root = sweep(tmp_path / "sweep", {"freeze": [CLEAR], "full": [CLOSE]}, ())
    params = "{strategy: 'freeze,partial,full', seed: '0,1,2'}" if mode == "fair" else "{strategy: 'a,b'}"
    (root / "multirun.yaml").write_text(  # as the presets write it: sweep=race lists no seeds
        f"hydra:\n  sweeper: {{mode: {mode}, params: {params}, race: {{max_seeds: 6}}}}\n"
        f"  overrides:\n    task: {task}\n"
        "    hydra: ['hydra.sweeper.tune.params.strategy.lr_scale=\"0.2,5\"', hydra.mode=MULTIRUN,"
        f" hydra.sweep.dir={root}]\n"
    )
    seeds = 4 if mode == "fair" else 7
    assert add_seeds_command(report.find_runs(root), seeds) == f"{expected} hydra.sweep.dir={root}"
