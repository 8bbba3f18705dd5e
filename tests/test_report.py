"""The report on hand-made run folders: the numbers it prints are the numbers the runs hold."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from tlbench.analysis import report
from tlbench.results.predictions import write_predictions

# 3 strategies × 2 seeds with known test accuracies.
ACCURACY = {"freeze": [0.80, 0.84], "partial": [0.86, 0.90], "full": [0.91, 0.93]}


def write_run(root: Path, name: str, acc: float, *, strategy="full", seed=0, per_class=None, **extra) -> Path:
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    params = {"data": "hymenoptera", "backbone": "resnet18", "strategy": strategy, "seed": seed}
    params |= {"per_class": per_class, "epochs": 3} | extra.pop("params", {})
    results = {
        "status": "complete",
        "overrides": [f"strategy={strategy}", f"seed={seed}"],
        "params": params,
        "metrics": {"test/acc": acc, "test/f1_macro": acc - 0.01, "test/auroc": acc + 0.05, "val/acc": acc},
        "classes": ["ants", "bees"],
        "wall_time_s": 60.0 + seed,
        "train_images_per_s": 48.0,
        "trainable_params": 12810,
        "peak_memory_mb": 800.0,
        **extra,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "strategies"
    for strategy, accs in ACCURACY.items():
        for seed, acc in enumerate(accs):
            write_run(root, f"seed={seed},strategy={strategy}", acc, strategy=strategy, seed=seed)
    failed = root / "seed=2,strategy=full"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "error.txt").write_text(
        'Traceback (most recent call last):\n  File "train.py", line 1\nRuntimeError: CUDA out of memory\n'
    )
    (root / "seed=2,strategy=freeze" / ".hydra").mkdir(parents=True)
    return root


def group(summary: dict, strategy: str) -> dict:
    return next(g for g in summary["groups"] if g["strategy"] == strategy)


def test_means_and_sample_stds_over_seeds(sweep_dir: Path):
    report.write_report(report.find_runs(sweep_dir), sweep_dir)
    summary = json.loads((sweep_dir / "summary.json").read_text())

    assert summary["counts"] == {"complete": 6, "failed": 1, "missing": 1}
    for strategy, accs in ACCURACY.items():
        acc = group(summary, strategy)["test/acc"]
        assert acc["n"] == 2
        assert acc["mean"] == pytest.approx(sum(accs) / 2)
        assert acc["std"] == pytest.approx(abs(accs[1] - accs[0]) / math.sqrt(2))  # ddof=1
    assert group(summary, "full")["test/f1_macro"]["mean"] == pytest.approx(0.91)
    assert group(summary, "full")["test/auroc"]["mean"] == pytest.approx(0.97)
    assert group(summary, "full")["wall_time_s"] == {"mean": 60.5, "std": pytest.approx(0.7071068), "n": 2}
    assert [g["strategy"] for g in summary["groups"]] == ["freeze", "partial", "full"]


def test_names_the_best_strategy_and_its_lead_with_an_interval(sweep_dir: Path):
    report.write_report(report.find_runs(sweep_dir), sweep_dir)
    (decision,) = json.loads((sweep_dir / "summary.json").read_text())["verdict"]

    assert [r["strategy"] for r in decision["ranking"]] == ["full", "partial", "freeze"]
    top = decision["comparisons"][0]
    assert (top["a"], top["b"], top["method"]) == ("full", "partial", "paired t-test")
    # Paired by seed, full − partial is 0.05 and 0.03: mean 0.04, SD 0.01414 on one degree of freedom.
    half = stats.t.ppf(0.975, 1) * 0.01414214 / math.sqrt(2)
    assert (top["diff"], top["low"], top["high"]) == pytest.approx((0.04, 0.04 - half, 0.04 + half))
    text = (sweep_dir / "summary.md").read_text()
    assert "## Best strategy" in text
    assert "By mean test acc: full 0.9200 ± 0.0141 (n=2), partial 0.8800 ± 0.0283 (n=2), freeze" in text
    assert "| full − partial | +0.040 [-0.087, +0.167] | 0.16 | 0.16 | paired t-test" in text


def test_failed_and_missing_runs_are_listed(sweep_dir: Path):
    report.write_report(report.find_runs(sweep_dir), sweep_dir)
    text = (sweep_dir / "summary.md").read_text()
    assert "## Failed runs (1)" in text
    assert "- `seed=2,strategy=full`: RuntimeError: CUDA out of memory" in text
    assert "## Missing runs (1)" in text
    assert "- `seed=2,strategy=freeze`: no results.json and no error.txt" in text

    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    assert len(rows) == 8
    assert sorted(r["status"] for r in rows) == ["complete"] * 6 + ["failed", "missing"]
    freeze0 = next(r for r in rows if r["run_dir"] == "seed=0,strategy=freeze")
    assert float(freeze0["test/acc"]) == 0.80
    assert (freeze0["backbone"], freeze0["per_class"], freeze0["seed"]) == ("resnet18", "all", "0")
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"] == "RuntimeError: CUDA out of memory"


def test_charts_are_written(sweep_dir: Path):
    report.write_report(report.find_runs(sweep_dir), sweep_dir)
    chart = sweep_dir / "accuracy_by_strategy.png"
    assert chart.read_bytes().startswith(b"\x89PNG") and chart.stat().st_size > 5000
    assert not list(sweep_dir.glob("learning_curve_*.png"))  # a single data size: no curve


def test_learning_curve_per_backbone_when_data_size_varies(tmp_path: Path):
    for per_class in (10, 30, 100):
        for strategy in ("freeze", "full"):
            for seed in (0, 1):
                acc = 0.5 + per_class / 400 + (0.05 if strategy == "full" else 0) + seed / 100
                name = f"data.per_class={per_class},seed={seed},strategy={strategy}"
                write_run(tmp_path, name, acc, strategy=strategy, seed=seed, per_class=per_class)
    write_run(tmp_path, "seed=0,strategy=full", 0.9, strategy="full")

    report.write_report(report.find_runs(tmp_path), tmp_path)
    curve = tmp_path / "learning_curve_resnet18.png"
    assert curve.read_bytes().startswith(b"\x89PNG") and curve.stat().st_size > 5000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(g["per_class"], g["strategy"]) for g in summary["groups"]][:3] == [
        (10, "freeze"),
        (10, "full"),
        (30, "freeze"),
    ]
    assert summary["groups"][-1]["per_class"] == "all"
    assert len(summary["verdict"]) == 4  # one verdict per data size


def test_single_seed_has_no_spread(tmp_path: Path):
    write_run(tmp_path, "a", 0.9, strategy="full")
    write_run(tmp_path, "b", 0.8, strategy="freeze")
    report.write_report(report.find_runs(tmp_path), tmp_path)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert group(summary, "full")["test/acc"] == {"mean": 0.9, "std": None, "n": 1}
    assert summary["verdict"][0]["seeds_to_separate"] == {"freeze": None}
    text = (tmp_path / "summary.md").read_text()
    assert "0.9000 ± –" in text
    assert "one seed: full has the best mean (full − freeze = +0.100, Holm p –)" in text
    assert "one seed and no predictions files give no interval: it cannot show a winner" in text


def test_auroc_only_for_two_classes(tmp_path: Path):
    write_run(tmp_path, "binary", 0.9)
    write_run(tmp_path, "three", 0.7, params={"data": "other"}, classes=["a", "b", "c"])
    groups = report.summarize(report.find_runs(tmp_path).runs)
    by_data = {g.data: g for g in groups}
    assert by_data["hymenoptera"].stats["test/auroc"].mean == pytest.approx(0.95)
    assert by_data["other"].stats["test/auroc"].n == 0


def test_runs_that_differ_in_other_params_are_not_averaged(tmp_path: Path):
    for seed, lr in enumerate((1e-3, 1e-2)):
        write_run(
            tmp_path, f"lr{lr}", 0.8 + seed / 10, seed=seed, params={"head_lr": lr, "backbone_lr": 1e-4}
        )
    groups = report.summarize(report.find_runs(tmp_path).runs)
    assert [(g.label, g.stats["test/acc"].n) for g in groups] == [
        ("full (head_lr=0.001)", 1),
        ("full (head_lr=0.01)", 1),
    ]


def test_unfinished_or_unreadable_results_count_as_missing(tmp_path: Path):
    write_run(tmp_path, "done", 0.9)
    write_run(tmp_path, "running", 0.9, status="running")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.json").write_text('{"status": "compl')
    retried = write_run(tmp_path, "retried", 0.8)
    (retried / "error.txt").write_text("ValueError: an earlier attempt")

    found = report.find_runs(tmp_path)
    assert sorted(r.path.name for r in found.runs) == ["done", "retried"]
    assert not found.failed
    why = {p.path.name: p.detail for p in found.missing}
    assert why["running"] == "results.json has status 'running', not 'complete'"
    assert why["corrupt"].startswith("results.json is unreadable")


def test_names_paths_and_errors_are_escaped_in_markdown(tmp_path: Path):
    write_run(tmp_path, "done", 0.9, params={"data": "x|y", "backbone": "<b>net*"})
    failed = tmp_path / "odd`name"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "error.txt").write_text("ValueError: bad [name](x) | *here*\n")
    report.write_report(report.find_runs(tmp_path), tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "| x\\|y | \\<b\\>net\\* | all | full | 1 |" in text  # one cell each, no HTML, no emphasis
    assert "- **\\<b\\>net\\*** on x\\|y, all images/class: only **full** ran." in text
    assert "- ``odd`name``: ValueError: bad \\[name\\](x) \\| \\*here\\*" in text


def test_cli_prints_the_table_and_the_summary_path(sweep_dir: Path, capsys):
    assert report.main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "| hymenoptera | resnet18 | all | full | 2 | 0.9200 ± 0.0141 |" in out
    assert f"report: {sweep_dir / 'summary.md'}" in out


def test_cli_writes_elsewhere_with_out(sweep_dir: Path, tmp_path: Path):
    assert report.main([str(sweep_dir), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "summary.md").exists()


def test_cli_fails_clearly_when_there_is_nothing_to_report(tmp_path: Path, capsys):
    (tmp_path / "only-missing" / ".hydra").mkdir(parents=True)
    assert report.main([str(tmp_path)]) == 1
    assert "no results.json or error.txt below" in capsys.readouterr().err
    assert report.main([str(tmp_path / "nowhere")]) == 2


def test_runs_as_a_module(sweep_dir: Path):
    done = subprocess.run(
        [sys.executable, "-m", "tlbench.report", str(sweep_dir)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "6 complete, 1 failed, 1 missing" in done.stdout


# ------------------------------------------------------------------ the verdict, cost and calibration
def write_predictions_for(folder: Path, right: int, n: int = 40) -> None:
    """Predictions of n test images (the same ones for every run) of which the first `right` are right."""
    items = [f"/data/hymenoptera/val/{'ants' if i % 2 else 'bees'}/{i:03d}.jpg" for i in range(n)]
    targets = np.array([1 - i % 2 for i in range(n)])
    confidence = np.linspace(0.55, 0.99, n)
    predicted = np.where(np.arange(n) < right, targets, 1 - targets)
    probs = np.empty((n, 2))
    probs[np.arange(n), predicted] = confidence
    probs[np.arange(n), 1 - predicted] = 1 - confidence
    write_predictions(folder, items, probs, targets, ["ants", "bees"])


def assert_png(path: Path, min_size=(400, 300)) -> None:
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


@pytest.fixture
def predicted_sweep(tmp_path: Path) -> Path:
    """freeze / partial / full × 3 seeds with predictions of the same 40 test images."""
    right = {"freeze": [24, 25, 26], "partial": [36, 37, 38], "full": [37, 37, 38]}
    for strategy, counts in right.items():
        for seed, k in enumerate(counts):
            folder = write_run(
                tmp_path,
                f"seed={seed},strategy={strategy}",
                k / 40,
                strategy=strategy,
                seed=seed,
                wall_time_s={"freeze": 30.0, "partial": 50.0, "full": 70.0}[strategy],
                trainable_params={"freeze": 1_000, "partial": 100_000, "full": 1_000_000}[strategy],
            )
            write_predictions_for(folder, k)
    return tmp_path


def test_verdict_from_predictions_files(predicted_sweep: Path):
    report.write_report(report.find_runs(predicted_sweep), predicted_sweep)
    (decision,) = json.loads((predicted_sweep / "summary.json").read_text())["verdict"]
    assert decision["winner"] is None and decision["cannot_tell_apart"] == ["full", "partial"]
    top = decision["comparisons"][0]
    assert (top["a"], top["b"], top["method"]) == ("full", "partial", "bootstrap (crossed)")
    assert top["diff"] == pytest.approx(1 / 120)  # one image more right in one of three seeds
    assert top["n_images"] == 40 and top["seeds"] == [0, 1, 2]
    assert all(c["p_holm"] < 0.05 for c in decision["comparisons"][1:])
    text = (predicted_sweep / "summary.md").read_text()
    assert "## Best strategy" in text
    assert "**resnet18** on hymenoptera, all images/class: **full**, **partial** cannot be told apart" in text
    assert "behind: freeze [bootstrap (crossed)]" in text
    assert "| full − freeze | +0.308 [" in text  # 37.33 / 40 − 25 / 40


def test_pareto_table_and_chart_mark_dominated_configurations(predicted_sweep: Path):
    report.write_report(report.find_runs(predicted_sweep), predicted_sweep)
    pareto = {p["strategy"]: p for p in json.loads((predicted_sweep / "summary.json").read_text())["pareto"]}
    # Each is cheaper than the next and less accurate: none is beaten on every axis.
    assert pareto["freeze"]["dominated_by"] == [] and pareto["full"]["dominated_by"] == []
    assert pareto["partial"]["dominated_by"] == []
    text = (predicted_sweep / "summary.md").read_text()
    assert "## Cost and accuracy" in text and "| hymenoptera, all images | resnet18 / full |" in text
    assert_png(predicted_sweep / "pareto.png")


def test_a_configuration_worse_on_every_axis_is_dominated(tmp_path: Path):
    write_run(tmp_path, "fast", 0.9, strategy="freeze", wall_time_s=10.0)
    write_run(tmp_path, "slow", 0.8, strategy="full", wall_time_s=100.0, trainable_params=99_999)
    report.write_report(report.find_runs(tmp_path), tmp_path)
    rows = {p["strategy"]: p for p in json.loads((tmp_path / "summary.json").read_text())["pareto"]}
    assert rows["full"]["dominated_by"] == ["resnet18 / freeze"] and rows["freeze"]["dominated_by"] == []
    assert "| dominated by resnet18 / freeze |" in (tmp_path / "summary.md").read_text()


def test_reliability_diagram_per_backbone_from_predictions(predicted_sweep: Path):
    report.write_report(report.find_runs(predicted_sweep), predicted_sweep)
    assert [p.name for p in predicted_sweep.glob("reliability_*.png")] == ["reliability_resnet18.png"]
    assert_png(predicted_sweep / "reliability_resnet18.png")


def test_without_predictions_the_verdict_says_it_fell_back(sweep_dir: Path):
    report.write_report(report.find_runs(sweep_dir), sweep_dir)
    text = (sweep_dir / "summary.md").read_text()
    assert "[paired t-test: no predictions files]" in text
    assert not list(sweep_dir.glob("reliability_*.png"))
    (decision,) = json.loads((sweep_dir / "summary.json").read_text())["verdict"]
    assert [c["method"] for c in decision["comparisons"]] == ["paired t-test"] * 3


def test_ece_is_a_column_when_runs_measured_it(tmp_path: Path):
    write_run(tmp_path, "a", 0.9, params={}, metrics={"test/acc": 0.9, "test/ece": 0.05})
    report.write_report(report.find_runs(tmp_path), tmp_path)
    assert "| ECE |" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["groups"][0]["test/ece"]["mean"] == 0.05


def test_where_strategies_cross_over_data_sizes(tmp_path: Path):
    # freeze ahead with 10 images/class, full ahead from 100: the crossing lies between 10 and 100.
    right = {10: {"freeze": 30, "full": 20}, 100: {"freeze": 32, "full": 38}, 300: {"freeze": 33, "full": 39}}
    for per_class, by_strategy in right.items():
        for strategy, k in by_strategy.items():
            for seed in (0, 1):
                name = f"data.per_class={per_class},seed={seed},strategy={strategy}"
                folder = write_run(tmp_path, name, k / 40, strategy=strategy, seed=seed, per_class=per_class)
                write_predictions_for(folder, k)
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "## Where strategies cross" in text
    assert "**resnet18** on hymenoptera: full overtakes freeze from about" in text
    (crossing,) = json.loads((tmp_path / "summary.json").read_text())["crossings"]
    assert crossing["between"] == [10, 100] and 10 < crossing["at"] < 100
    # −0.25 at 10 and +0.15 at 100, interpolated in log size: 10^(1 + 0.25/0.4) = 42.
    assert crossing["at"] == pytest.approx(10 ** (1 + 0.25 / 0.4))
    assert crossing["low"] <= crossing["at"] <= crossing["high"]
    assert_png(tmp_path / "reliability_resnet18.png")
