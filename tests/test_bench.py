"""benchmarks/bench.py (`make bench`) end to end, on a workload small enough for a CPU test."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import import_script, shared_data

TINY = [
    "--quick",
    "--epochs=1",
    "--per-class=4",
    "--val-per-class=2",
    "--test-per-class=4",
    "--size=32",
    "--batch-size=8",
    "--workers=0",
    "--ceiling-batch=4",
    "--ceiling-steps=1",
]


@pytest.fixture(scope="module")
def bench():
    """The script, imported from the checkout: it is not part of the installed package."""
    yield import_script("bench")
    del sys.modules["bench"]


@pytest.mark.slow  # real CIFAR-10 images
def test_bench_times_notebook_and_product_path_on_the_same_images(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main([*TINY, f"--data={shared_data('cifar10')}", f"--out={out}"])
    table = capsys.readouterr().out

    assert report["images"] == {"train": 40, "val": 20, "test": 40}
    run = report["runs"]["efficientnet_lite0"]
    for strategy in ("freeze", "partial", "full"):
        assert f"| efficientnet_lite0 | {strategy} |" in table
        notebook, product = run["notebook"]["strategies"][strategy], run["tlbench"][strategy]
        for row in (notebook, product):
            assert row["wall_s"] > 0 and row["train_img_s"] > 0 and row["peak_mem_mb"] > 0
            assert 0.0 <= row["test_acc"] <= 1.0
        # tlbench trained on the notebook's images and tested on its test images
        assert product["split_sizes"] == {"train": 40, "val": 20, "test": 40}
        assert product["device"].startswith("cpu") and product["precision"] == "32-true"
    assert run["tlbench"]["freeze"]["feature_cache"] is True
    assert run["freeze_uncached"]["feature_cache"] is False
    assert run["tlbench_total_s"] == pytest.approx(sum(r["wall_s"] for r in run["tlbench"].values()))

    ratios = bench.speedups(run)
    assert all(r > 0 for r in ratios.values())
    assert f"**{ratios['experiment']:.2f}×**" in table
    assert bench.freeze_cache_ratio(run) > 0
    ceiling = report["ceiling"]["efficientnet_lite0"]
    assert ceiling["train_img_s"] > 0 and ceiling["forward_img_s"] > 0
    assert ceiling["tlbench_full_img_s"] == run["tlbench"]["full"]["train_img_s"]
    assert report["targets"][0]["target"] == "efficientnet_lite0: experiment ≥ 3× the notebook loop"

    assert json.loads(out.read_text())["workload"]["per_class"] == 4
    assert out.with_suffix(".md").read_text().startswith("machine: ")


def test_fast_path_overrides_are_in_one_place(bench, tmp_path):
    overrides = bench.tlbench_overrides(tmp_path, "resnet18", "freeze", bench.QUICK, tmp_path / "decoded")
    for fast in bench.FAST["every"] + bench.FAST["freeze"]:
        assert fast.format(cache_dir=tmp_path / "decoded") in overrides
    assert "backbone.weights=null" in overrides  # nothing but Lite0 has weights offline
    partial = bench.tlbench_overrides(tmp_path, "efficientnet_lite0", "partial", bench.QUICK, tmp_path)
    assert not any(o.startswith("strategy.cache_features") for o in partial)


# --------------------------------------------------------------------------- benchmarks/ablation.py (issue 9)
@pytest.fixture(scope="module")
def ablation(bench):
    yield import_script("ablation")
    del sys.modules["ablation"]


def test_every_ablation_variant_composes_into_the_config_it_names(ablation, tmp_path):
    """Each row changes what its overrides say, through the config `python -m tlbench.train` reads."""
    from tlbench.run.train import compose_config

    s = ablation.Setting(data=str(tmp_path))
    for v in ablation.VARIANTS:
        overrides = ablation.product_overrides(tmp_path, s, v, seed=3, cache_dir=tmp_path / "decoded")
        cfg = compose_config(overrides)
        assert cfg.seed == 3 and cfg.strategy.name == v.strategy
        assert cfg.trainer.max_epochs == (2 * s.epochs if v.key == "epochs_x2" else s.epochs)
    cfg = compose_config(ablation.product_overrides(tmp_path, s, ablation.BY_KEY["test_last"], 0, tmp_path))
    assert cfg.trainer.monitor == "step"  # ModelCheckpoint(mode=max) on the step: the last epoch is tested


def test_ablation_preset_patch_applies_for_one_run_only(ablation):
    import tlbench.run.train

    original = tlbench.run.train.get_preset
    with ablation.preset_patched(ablation.BY_KEY["notebook_preprocessing"].preset) as used:
        preset = tlbench.run.train.get_preset("efficientnet_lite0", "imagenet", 3)
    assert preset.mean == (0.485, 0.456, 0.406) and preset.interpolation == "bilinear"
    assert used["preset"]["std"] == (0.229, 0.224, 0.225)
    assert tlbench.run.train.get_preset is original
    assert original("efficientnet_lite0", "imagenet", 3).mean == (0.5, 0.5, 0.5)  # Lite0's own statistics
