"""The ensemble of the compared strategies and their shared errors, on predictions whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tlbench.analysis import report
from tlbench.results.predictions import write_predictions

N = 100


def write_run(
    root: Path, strategy: str, seed: int, wrong, confidence: float = 0.6, right: float = 0.9
) -> None:
    """A finished run right on every image but `wrong`, with P(true class) `right` where right and
    1 − `confidence` where wrong."""
    folder = root / f"seed={seed},strategy={strategy}"
    folder.mkdir(parents=True)
    targets = np.arange(N) % 2
    p_true = np.full(N, right)
    p_true[list(wrong)] = 1 - confidence
    probs = np.empty((N, 2))
    probs[np.arange(N), targets] = p_true
    probs[np.arange(N), 1 - targets] = 1 - p_true
    write_predictions(folder, [f"img_{i:03d}.jpg" for i in range(N)], probs, targets, ["ants", "bees"])
    results = {
        "status": "complete",
        "overrides": [f"strategy={strategy}", f"seed={seed}"],
        "params": {"data": "hymenoptera", "backbone": "resnet18", "strategy": strategy, "seed": seed},
        "metrics": {"test/acc": 1 - len(wrong) / N},
    }
    (folder / "results.json").write_text(json.dumps(results))


def analysed(root: Path):
    found = report.find_runs(root)
    return found, report.analyse(found.runs)


def test_strategies_wrong_on_different_images_make_a_better_ensemble(tmp_path: Path):
    for seed in range(3):
        write_run(tmp_path, "freeze", seed, range(20))
        write_run(tmp_path, "full", seed, range(20, 40))
    found, analysis = analysed(tmp_path)
    (e,) = analysis.ensembles
    # Where one is wrong (P(true) 0.4) the other is right (0.9): the mean 0.65 is right on every image.
    assert e.members == ["freeze", "full"] and e.comparison.diff == pytest.approx(1.0 - 0.8)
    assert e.comparison.separated and e.comparison.method == "bootstrap (crossed)"
    assert e.text.startswith("the ensemble beats freeze, the best single strategy, over 3 seeds")
    (shared,) = e.shared
    assert (shared.both, shared.only_a, shared.only_b) == pytest.approx((0.0, 0.2, 0.2))
    text = report.render_summary_md(found, analysis)
    assert (
        "## Ensemble and shared errors" in text
        and "| freeze | full | 0.000 | 0.200 | 0.200 | 3 | 100 |" in text
    )
    assert report.summary_json(found, analysis)["ensembles"][0]["text"] == e.text
    assert e.text.replace("**", "") in report.verdict_text(analysis, found)


def test_identical_strategies_gain_nothing(tmp_path: Path):
    for seed in range(2):
        write_run(tmp_path, "freeze", seed, range(15))
        write_run(tmp_path, "full", seed, range(15))
    _, analysis = analysed(tmp_path)
    (e,) = analysis.ensembles
    assert (e.comparison.diff, e.comparison.low, e.comparison.high) == (0.0, 0.0, 0.0)
    assert e.text.startswith(
        "the ensemble and freeze, the best single strategy, cannot be told apart over 2 seeds"
    )
    assert (e.shared[0].both, e.shared[0].only_a, e.shared[0].only_b) == pytest.approx((0.15, 0.0, 0.0))


def test_shared_errors_by_hand_and_probabilities_not_votes(tmp_path: Path):
    # A wrong on 0–29, B on 20–49: both on 20–29 (10%), A alone on 0–19 (20%), B alone on 30–49 (20%).
    # C is right everywhere, sure where A and B are unsure: averaging probabilities (0.45, 0.45, 0.99 for
    # the true class on 20–29) is right there, a majority vote of A, B, C would not be.
    write_run(tmp_path, "a", 0, range(30), confidence=0.55)
    write_run(tmp_path, "b", 0, range(20, 50), confidence=0.55)
    write_run(tmp_path, "c", 0, [], right=0.99)
    write_run(tmp_path, "a", 1, range(30), confidence=0.55)
    write_run(tmp_path, "b", 1, range(20, 50), confidence=0.55)
    write_run(tmp_path, "c", 1, [], right=0.99)
    _, analysis = analysed(tmp_path)
    (e,) = analysis.ensembles
    shared = {(s.a, s.b): (s.both, s.only_a, s.only_b) for s in e.shared}
    assert shared[("a", "b")] == pytest.approx((0.10, 0.20, 0.20))
    assert shared[("c", "a")] == pytest.approx((0.0, 0.0, 0.30))
    assert e.best == "c" and e.comparison.diff == 0.0  # the ensemble is right everywhere, as c is


def test_one_seed_shows_no_gain(tmp_path: Path):
    write_run(tmp_path, "freeze", 0, range(20))
    write_run(tmp_path, "full", 0, range(20, 40))
    _, analysis = analysed(tmp_path)
    (e,) = analysis.ensembles
    assert e.comparison.p < 0.05  # beyond test-image sampling on this seed ...
    assert e.text.startswith("one seed: ensemble − freeze = +0.200")  # ... and still no claim of a gain
    assert "beats" not in e.text and "cannot show whether the ensemble helps" in e.text


def test_names_are_escaped_and_runs_without_predictions_are_left_out(tmp_path: Path):
    for seed in range(2):
        write_run(tmp_path, "a|b", seed, range(10))
        write_run(tmp_path, "*c*", seed, range(20))
    found, analysis = analysed(tmp_path)
    text = report.render_summary_md(found, analysis)
    assert "| a\\|b | \\*c\\* | 0.100 | 0.000 | 0.100 | 2 | 100 |" in text
    for folder in tmp_path.iterdir():
        if "a|b" in folder.name:
            (folder / "predictions.csv").unlink()
    _, analysis = analysed(tmp_path)
    assert analysis.ensembles == []  # one strategy with predictions: nothing to combine
