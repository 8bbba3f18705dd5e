"""The report on hand-made run folders: the numbers it prints are the numbers the runs hold."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tlbench import report

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


def test_names_the_best_strategy_and_its_lead_in_pooled_sds(sweep_dir: Path):
    report.write_report(report.find_runs(sweep_dir), sweep_dir)
    (best,) = json.loads((sweep_dir / "summary.json").read_text())["best"]

    assert (best["best"], best["runner_up"]) == ("full", "partial")
    assert best["margin"] == pytest.approx(0.04)
    pooled = math.sqrt((0.02828427**2 + 0.01414214**2) / 2)  # one degree of freedom each
    assert best["pooled_std"] == pytest.approx(pooled)
    assert best["margin_in_pooled_std"] == pytest.approx(0.04 / pooled)
    text = (sweep_dir / "summary.md").read_text()
    assert (
        "**full** (0.9200 ± 0.0141) beats partial (0.8800 ± 0.0283) by 0.0400 test acc = 1.79 pooled SD"
        in text
    )
    assert "pooled" in text and "n1+n2-2" in text


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
    assert len(summary["best"]) == 4  # one verdict per data size


def test_single_seed_has_no_spread(tmp_path: Path):
    write_run(tmp_path, "a", 0.9, strategy="full")
    write_run(tmp_path, "b", 0.8, strategy="freeze")
    report.write_report(report.find_runs(tmp_path), tmp_path)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert group(summary, "full")["test/acc"] == {"mean": 0.9, "std": None, "n": 1}
    assert summary["best"][0]["note"] == "n=1: no spread"
    text = (tmp_path / "summary.md").read_text()
    assert "0.9000 ± –" in text
    assert "beats freeze (0.8000 ± –) by 0.1000 test acc; n=1: no spread." in text


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
