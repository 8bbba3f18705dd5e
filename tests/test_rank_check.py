"""The report's check of a ranking against training (analysis/transfer_check.py): which runs a rank.json
entry stands for, Kendall τ and weighted τ per score and strategy, how often the top-scored backbone was
the most accurate, and the section in summary.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlbench.analysis.collect import find_runs
from tlbench.analysis.report import render_summary_md
from tlbench.analysis.summary import analyse
from tlbench.analysis.transfer_check import check_ranking, find_checks, render_rank_table

DATA = {"source": "imagefolder", "root": "/data/bees", "in_chans": 3, "image_size": None, "per_class": None}
DATA |= {"val_fraction": 0.2, "test_fraction": None, "folds": None}
BACKBONES = {
    "lite0": {
        "name": "efficientnet_lite0",
        "weights": "imagenet",
        "checkpoint": None,
        "in_chans_mode": "sum",
    },
    "noisy": {"name": "timm/tf_efficientnet_lite0", "weights": None, "checkpoint": "/w/noisy.pth"},
    "r18": {"name": "resnet18", "weights": "DEFAULT", "checkpoint": None, "in_chans_mode": "sum"},
    "random": {"name": "resnet18", "weights": None, "checkpoint": None, "in_chans_mode": "sum"},
}
# Fine-tuned test accuracy per backbone and seed; lite0 best in seed 0, r18 best in seed 1.
ACCURACY = {"lite0": (0.95, 0.90), "r18": (0.92, 0.93), "noisy": (0.80, 0.82), "random": (0.60, 0.62)}


def write_run(root: Path, key: str, seed: int, strategy: str = "freeze", data: dict = DATA) -> None:
    folder = root / f"{key}-{strategy}-{seed}"
    folder.mkdir(parents=True)
    backbone = BACKBONES[key] | {"in_chans_mode": "sum"}
    results = {
        "status": "complete",
        "params": {"data": "bees", "backbone": backbone["name"], "strategy": strategy, "seed": seed},
        "metrics": {"test/acc": ACCURACY[key][seed]},
        "config": {"data": data, "backbone": backbone},
    }
    (folder / "results.json").write_text(json.dumps(results))


def ranking(scores: dict[str, dict[str, float | None]]) -> dict:
    rows = [
        {"label": key, "backbone": BACKBONES[key] | {"in_chans_mode": "sum"}, "feature_dim": 8}
        | {"scores": values, "source_note": None if values.get("leep") is not None else "random init"}
        | {"embed_seconds": 1.0, "features_cached": False}
        for key, values in scores.items()
    ]
    return {"data": DATA, "classes": ["ants", "bees"], "train_images": 10, "folds": 5, "backbones": rows}


def scores_in_order(order: list[str], leep_for_random: float | None = None) -> dict:
    """Every score ranks the backbones in `order`, best first; LEEP is n/a for random init by default."""
    values = {}
    for i, key in enumerate(order):
        v = float(len(order) - i)
        leep = leep_for_random if key == "random" else v
        values[key] = {"logme": v, "leep": leep, "nce": v, "h_score": v, "probe_acc": v / 10}
    return values


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for key in ACCURACY:
        for seed in (0, 1):
            write_run(tmp_path, key, seed)
    return tmp_path


def test_a_score_in_the_order_of_mean_accuracy_has_tau_one(sweep):
    order = ["r18", "lite0", "noisy", "random"]  # means 0.925, 0.925, 0.81, 0.61: a tie at the top
    (sweep / "rank").mkdir()
    (sweep / "rank" / "rank.json").write_text(
        json.dumps(ranking(scores_in_order(order, leep_for_random=0.0)))
    )
    [check] = check_ranking(
        sweep / "rank" / "rank.json", ranking(scores_in_order(order, 0.0)), find_runs(sweep).runs
    )
    assert check.strategy == "freeze" and check.seeds == 2
    assert check.labels == order and check.accuracy == pytest.approx([0.925, 0.925, 0.81, 0.61])
    tau, _ = check.tau["logme"]
    # 6 pairs: 5 concordant, 1 tied in accuracy (r18 = lite0): τ-b = 5 / sqrt(6 · 5).
    assert tau == pytest.approx(5 / 30**0.5, abs=1e-12)
    # The top-scored backbone (r18) was the most accurate in seed 1, not in seed 0.
    assert check.top_hits["logme"] == (1, 2)


def test_one_swapped_pair_and_a_reversed_order():
    runs = []
    from tlbench.analysis.collect import Run

    for key in ("lite0", "noisy", "random"):
        for seed in (0, 1):
            backbone = BACKBONES[key] | {"in_chans_mode": "sum"}
            results = {
                "params": {"strategy": "freeze", "seed": seed},
                "metrics": {"test/acc": ACCURACY[key][seed]},
            }
            runs.append(Run(Path(key), results | {"config": {"data": DATA, "backbone": backbone}}))
    right = scores_in_order(["lite0", "noisy", "random"], leep_for_random=-1.0)
    right["noisy"]["h_score"], right["random"]["h_score"] = 0.0, 1.0  # noisy and random swapped
    for key, value in zip(("lite0", "noisy", "random"), (1.0, 2.0, 3.0)):
        right[key]["nce"] = value  # reversed
    [check] = check_ranking(Path("rank.json"), ranking(right), runs)
    assert check.tau["logme"][0] == pytest.approx(1.0)
    assert check.tau["h_score"][0] == pytest.approx(1 / 3)  # 3 pairs: 2 concordant, 1 discordant
    assert check.tau["nce"][0] == pytest.approx(-1.0)
    assert check.top_hits["logme"] == (2, 2) and check.top_hits["nce"] == (0, 2)
    assert check.weighted_tau["logme"] == pytest.approx(1.0) and check.weighted_tau["nce"] == pytest.approx(
        -1.0
    )


def test_runs_of_other_data_or_weights_are_not_counted(tmp_path):
    for key in ("lite0", "noisy", "random"):
        write_run(tmp_path, key, 0)
    write_run(tmp_path, "r18", 0, data=DATA | {"per_class": 5})  # another training split: not this rank's
    scores = scores_in_order(["lite0", "r18", "noisy", "random"], leep_for_random=0.5)
    [check] = check_ranking(tmp_path / "rank.json", ranking(scores), find_runs(tmp_path).runs)
    assert check.labels == ["lite0", "noisy", "random"]  # r18's run trained on 5 images per class


def test_the_report_has_the_section_when_a_rank_json_lies_in_the_sweep(sweep):
    (sweep / "rank").mkdir()
    scores = scores_in_order(["lite0", "r18", "noisy", "random"])
    (sweep / "rank" / "rank.json").write_text(json.dumps(ranking(scores)))
    (sweep / "broken").mkdir()
    (sweep / "broken" / "rank.json").write_text("{not json")
    found = find_runs(sweep)
    checks, notes = find_checks(found)
    assert len(checks) == 1 and len(notes) == 1 and "broken" in notes[0]
    summary = render_summary_md(found, analyse(found.runs))
    assert "## Ranking before training" in summary
    assert "| LogME | +1.00 |" not in summary  # lite0 and r18 tie in mean accuracy: τ-b < 1
    # Random init has no source classifier: LEEP is compared over the other three.
    assert (
        "| LEEP | 3 | +0.82 |" in summary and "| LogME | 4 |" in summary
    )  # τ-b = 2/√(3·2): a tie in accuracy
    assert "broken" in summary


def test_no_rank_json_no_section(sweep):
    found = find_runs(sweep)
    assert "Ranking before training" not in render_summary_md(found, analyse(found.runs))


def test_the_rank_table_marks_na_and_says_why():
    result = ranking(scores_in_order(["lite0", "random"]))
    text = render_rank_table(result)
    assert text.index("lite0") < text.index("random")  # best LogME first
    assert "random: LEEP, NCE n/a (random init)" in text
