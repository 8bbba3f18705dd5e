"""The entry point as a user meets it: configs that compose, runs that finish, errors that explain."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder, shared_data, small
from tlbench.run.checks import check_config
from tlbench.run.train import build_datamodule, build_module, compose_config, train

CONF = resources.files("tlbench.conf")
GROUPS = ("data", "backbone", "strategy", "optim", "trainer", "logger", "experiment")


def options(group: str) -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml")
    )


@pytest.fixture
def generated(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4, "test": 4})


def test_every_group_has_its_expected_options():
    assert options("strategy") == sorted(
        ["freeze", "bitfit", "norm", "lora", "surgical", "partial", "gradual", "lpft", "full", "l2sp"]
    )
    assert {
        "resnet18",
        "resnet50",
        "resnet152",
        "vgg16",
        "efficientnet_b0",
        "mobilenet_v3_large",
        "convnext_tiny",
        "vit_b_16",
        "efficientnet_lite0",
    } <= set(options("backbone"))
    assert {"imagefolder", "cifar10", "fashion_mnist"} <= set(options("data"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_option_composes(group, generated):
    for option in options(group):
        cfg = compose_config([f"{group}={option}", f"data.root={generated}"])
        assert cfg.data.source and cfg.backbone.name and cfg.strategy.name, (group, option)


@pytest.mark.parametrize("backbone", options("backbone"))
def test_every_backbone_config_instantiates(backbone, generated):
    cfg = compose_config([f"backbone={backbone}", *small(generated, backbone=None)])
    datamodule = build_datamodule(check_config(cfg), generated)
    module = build_module(check_config(cfg), datamodule)
    assert module.num_classes == 2 and module.preset.crop_size > 0


@pytest.mark.parametrize("strategy", options("strategy"))
@pytest.mark.parametrize("data_in_chans", [1, 3])
def test_every_strategy_runs_fast_dev_run(strategy, data_in_chans, generated, tmp_path):
    cfg = compose_config(
        [
            f"strategy={strategy}",
            *small(generated),
            f"data.in_chans={data_in_chans}",
            "trainer.fast_dev_run=true",
            "logger=none",
        ]
    )
    results = train(cfg, tmp_path / "run")
    assert results["status"] == "complete" and 0.0 <= results["metrics"]["test/acc"] <= 1.0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["params"]["strategy"] == strategy and saved["config"]["data"]["in_chans"] == data_in_chans
    assert saved["trainable_params"] < saved["total_params"] or strategy in ("full", "l2sp")
    assert saved["trainable_params"] <= saved["stored_params_per_task"] and saved["optimizer_steps"] == 1


def test_cli_run_writes_results_then_skips_when_run_again(generated, tmp_path, cli):
    run_dir = tmp_path / "run"
    args = (
        *small(generated),
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    )
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "test acc" in first.stdout and str(run_dir) in first.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["best_checkpoint"] == "checkpoints/best.ckpt"
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 1  # the final epoch, whichever epoch was best
    assert results["train_images_per_s"] > 0 and results["peak_memory_mb"] > 0
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    stamp = (run_dir / "results.json").stat().st_mtime
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "skipping" in again.stderr + again.stdout
    assert (run_dir / "results.json").stat().st_mtime == stamp


def test_missing_weights_offline_fail_fast_with_the_ways_out(generated, tmp_path, cli):
    result = cli(
        "data=imagefolder",
        f"data.root={generated}",
        "backbone=resnet152",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "backbone.checkpoint" in result.stderr and "backbone.weights=null" in result.stderr
    assert (tmp_path / "run" / "error.txt").exists()
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # failed before training (not after a timeout)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy=finetune", "Available options in 'strategy'"),
        ("backbone.name=resnet17", "resnet18"),
        ("data.root=/no/such/dir", "does not exist"),
    ],
)
def test_bad_names_and_paths_get_a_clear_message(override, message, generated, tmp_path, cli):
    args = [*small(generated), override, f"hydra.run.dir={tmp_path / 'run'}"]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_lite0_freeze_on_hymenoptera_reaches_90_percent(tmp_path):
    root = shared_data("hymenoptera")
    cfg = compose_config(
        ["experiment=hymenoptera", f"data.root={root}", "logger=none", "trainer.enable_progress_bar=false"]
    )
    results = train(cfg, tmp_path / "run")
    assert results["params"]["epochs"] == 3
    assert results["metrics"]["val/acc"] >= 0.90
    assert results["best_val"] >= 0.90


def test_configs_ship_in_the_wheel(tmp_path):
    """`pip install tlbench` (not only an editable checkout) must find every config."""
    import zipfile

    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    build = subprocess.run(
        [*pip_wheel, "-w", str(tmp_path), "."],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("tlbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("tlbench/conf/") for n in names if n.endswith(".yaml")}
    repo_conf = Path(__file__).resolve().parents[1] / "conf"
    assert shipped == {str(p.relative_to(repo_conf)) for p in repo_conf.rglob("*.yaml")}
    # Hydra finds tlbench's sweeper (hydra/sweeper=tlbench) in the hydra_plugins namespace, never its __init__
    assert "hydra_plugins/tlbench_sweeper/tlbench_sweeper.py" in names
    assert "hydra_plugins/__init__.py" not in names
