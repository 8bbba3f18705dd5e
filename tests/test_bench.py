"""`python -m tlbench.bench --quick`: the whole benchmark, CPU-sized, as CI runs it."""

from __future__ import annotations

import json

import pytest

from conftest import shared_data
from tlbench import bench


def test_quick_bench_reports_every_strategy_with_sane_numbers(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(["--quick", "--data", str(shared_data("cifar10")), "--out", str(out)])
    table = capsys.readouterr().out

    for strategy in ("freeze", "partial", "full"):
        assert f"| resnet18 | {strategy} |" in table
        for side in ("notebook", "tlbench"):
            row = report["runs"]["resnet18"][side][strategy]
            assert row["wall_s"] > 0 and row["train_img_s"] > 0 and row["peak_mem_mb"] > 0
            assert 0.0 <= row["test_acc"] <= 1.0
    assert "**experiment**" in table
    ceiling = report["ceiling"]["resnet18"]
    assert ceiling["train_img_s"] > 0 and ceiling["forward_img_s"] > 0
    analysis = report["runs"]["resnet18"]["freeze_analysis"]
    assert analysis["noaug_e2e_acc"] == pytest.approx(analysis["noaug_cached_acc"], abs=0.02)
    assert json.loads(out.read_text())["settings"]["per_class"] == 10
    assert out.with_suffix(".md").read_text().startswith("machine:")
