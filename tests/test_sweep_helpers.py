"""Sweep machinery without training: run-folder names, failures on disk, GPU pinning, the DDP guard, the
launcher and sweep presets as tlbench's own config composes them. Whole sweeps of the real entry point
(skip, force, retry, failures, launchers): test_sweep.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from tlbench.run import sweep

# --- run-folder names ---------------------------------------------------------------------------------


def test_run_folder_is_named_from_its_overrides():
    assert (
        sweep.job_dirname("backbone=resnet18,seed=0,strategy=freeze")
        == "backbone=resnet18,seed=0,strategy=freeze"
    )
    assert sweep.job_dirname("data.root=../shared/data/hymenoptera,seed=1") == (
        "data.root=.._shared_data_hymenoptera,seed=1"
    )
    assert sweep.job_dirname("") == "defaults"


def test_long_run_folder_names_stay_short_and_distinct():
    a = sweep.job_dirname("data.root=" + "x" * 300 + ",seed=0")
    b = sweep.job_dirname("data.root=" + "x" * 300 + ",seed=1")
    assert a != b
    assert len(a.encode()) <= sweep.MAX_DIRNAME and a.startswith("data.root=xxx")
    assert a == sweep.job_dirname("data.root=" + "x" * 300 + ",seed=0")


# --- failures on disk ---------------------------------------------------------------------------------


def test_record_failure_keeps_the_traceback(tmp_path: Path):
    try:
        raise ValueError("data.root does not exist")
    except ValueError as error:
        path = sweep.record_failure(tmp_path / "run", error)

    text = path.read_text()
    assert path == tmp_path / "run" / "error.txt"
    assert text.startswith("Traceback (most recent call last):")
    assert "test_record_failure_keeps_the_traceback" in text
    assert text.strip().splitlines()[-1] == "ValueError: data.root does not exist"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["error.txt"]  # no temporary file left

    sweep.clear_failure(tmp_path / "run")
    assert not path.exists()
    sweep.clear_failure(tmp_path / "run")  # nothing to clear is fine


# --- one GPU per parallel job -------------------------------------------------------------------------


def test_gpu_candidates_start_at_the_jobs_own_gpu():
    assert sweep.gpu_candidates(0, 4) == [0, 1, 2, 3]
    assert sweep.gpu_candidates(5, 4) == [1, 2, 3, 0]
    assert sweep.gpu_candidates(7, 1) == [0]


def test_claim_gpu_skips_gpus_held_by_other_jobs(tmp_path: Path):
    first, held = sweep.claim_gpu(0, ["0", "1"], tmp_path)
    second, held_too = sweep.claim_gpu(0, ["0", "1"], tmp_path)  # job 0 again, GPU 0 taken
    assert (first, second) == ("0", "1")

    shared, none = sweep.claim_gpu(1, ["0", "1"], tmp_path)  # every GPU taken: share the job's own
    assert (shared, none) == ("1", None)

    held.close()  # the job holding GPU 0 ended
    assert sweep.claim_gpu(1, ["0", "1"], tmp_path)[0] == "0"
    held_too.close()


def hydra_cfg(mode: RunMode, launcher: str, job_num: int = 0):
    target = f"hydra_plugins.x.{launcher}"
    return OmegaConf.create({"mode": mode, "launcher": {"_target_": target}, "job": {"num": job_num}})


def test_only_parallel_jobs_are_pinned():
    assert sweep.should_pin(hydra_cfg(RunMode.MULTIRUN, "JoblibLauncher"))
    assert not sweep.should_pin(hydra_cfg(RunMode.MULTIRUN, "BasicLauncher"))
    assert not sweep.should_pin(hydra_cfg(RunMode.MULTIRUN, "SlurmLauncher"))
    assert not sweep.should_pin(hydra_cfg(RunMode.RUN, "BasicLauncher"))


def test_pin_job_to_gpu_sets_cuda_visible_devices_once(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sweep, "_pinned_gpu", None)
    monkeypatch.setattr(sweep, "_gpu_lock", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")

    assert sweep.pin_job_to_gpu(hydra_cfg(RunMode.MULTIRUN, "JoblibLauncher", job_num=1), tmp_path) == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    # The process keeps its GPU for its next job: CUDA cannot move once started.
    assert sweep.pin_job_to_gpu(hydra_cfg(RunMode.MULTIRUN, "JoblibLauncher", job_num=2), tmp_path) == "5"
    sweep._gpu_lock.close()


def test_pin_job_to_gpu_leaves_single_runs_and_single_gpus_alone(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sweep, "_pinned_gpu", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert sweep.pin_job_to_gpu(hydra_cfg(RunMode.RUN, "BasicLauncher"), tmp_path) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert sweep.pin_job_to_gpu(hydra_cfg(RunMode.MULTIRUN, "JoblibLauncher"), tmp_path) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"


# --- DDP inside a sweep -------------------------------------------------------------------------------


def test_ddp_inside_a_multirun_is_refused_with_the_fix():
    problem = sweep.ddp_problem("ddp", 2, multirun=True, environ={})
    assert "ddp_spawn" in problem and "docs/SWEEPS.md" in problem


@pytest.mark.parametrize(
    ("strategy", "devices", "multirun", "environ"),
    [
        ("ddp", 2, False, {}),  # a single run: Lightning re-runs a plain command
        ("ddp_spawn", 2, True, {}),  # spawns, re-runs nothing
        ("ddp", 1, True, {}),  # one device: no other ranks
        ("ddp", 4, True, {"LOCAL_RANK": "0"}),  # torchrun started the ranks
        ("ddp", 4, True, {"SLURM_NTASKS": "4"}),  # srun started the ranks
        ("auto", 2, True, {}),
    ],
)
def test_ddp_combinations_that_work(strategy, devices, multirun, environ):
    assert sweep.ddp_problem(strategy, devices, multirun, environ) is None


def test_several_devices():
    assert [sweep.uses_several_devices(d) for d in (1, "1", 2, "4", -1, "auto", "0,1", [0, 1], [3])] == [
        False,
        False,
        True,
        True,
        True,
        True,
        True,
        True,
        False,
    ]


# --- presets ------------------------------------------------------------------------------------------


def compose_with_hydra(*overrides: str):
    """tlbench's config with its hydra: block (launcher, sweeper, sweep folder), as `-m` composes it."""
    GlobalHydra.instance().clear()
    sweep.register_with_hydra()
    with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_sweep_presets_set_the_grid():
    grids = {
        "strategies": {"strategy": "freeze,partial,full", "seed": "0,1,2"},
        "strategies_backbones": {
            "strategy": "freeze,partial,full",
            "backbone": "resnet18,resnet50,efficientnet_lite0",
            "seed": "0,1,2",
        },
        "data_size": {"data.per_class": "10,30,100,300", "strategy": "freeze,partial,full", "seed": "0,1,2"},
    }
    for name, grid in grids.items():
        cfg = compose_with_hydra(f"sweep={name}")
        assert dict(cfg.hydra.sweeper.params) == grid
        assert cfg.hydra.sweep.dir == f"outputs/multirun/{name}"  # each preset sweep in its own folder


def test_slurm_preset_exposes_gpus_time_and_partition():
    cfg = compose_with_hydra(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"
    )
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 2, 120)
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.tasks_per_node) == (8, 32, 1)


def test_gpus_preset_runs_one_job_per_gpu():
    launcher = compose_with_hydra("hydra/launcher=gpus").hydra.launcher
    assert launcher.n_jobs == max(1, sweep.gpu_count())
    assert launcher._target_.endswith("JoblibLauncher") or launcher._target_.startswith(sweep.NOT_INSTALLED)


def test_a_missing_plugin_names_the_package_to_install(monkeypatch, caplog):
    monkeypatch.setattr(sweep, "is_installed", lambda module: module.endswith("launcher"))
    assert [option for _, option, _, _ in sweep.missing_plugins()] == ["optuna"]

    target = f"{sweep.NOT_INSTALLED}hydra_optuna_sweeper__pip_install_tlbench[optuna]"
    config = OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": target}, "runtime": {"choices": {"hydra/sweeper": "optuna"}}}}
    )
    with pytest.raises(SystemExit):
        sweep.ExplainMissingPlugin().on_multirun_start(config)
    assert "pip install 'tlbench[optuna]'" in caplog.text and "hydra-optuna-sweeper" in caplog.text


def test_only_rank_zero_reports_under_torchrun(tmp_path: Path, monkeypatch):
    run = tmp_path / "strategy=full"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"status": "complete", "params": {}, "metrics": {}}))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    monkeypatch.setenv("RANK", "1")
    sweep.ReportOnMultirunEnd().on_multirun_end(config)
    assert not (tmp_path / "summary.md").exists()
    monkeypatch.setenv("RANK", "0")
    sweep.ReportOnMultirunEnd().on_multirun_end(config)
    assert (tmp_path / "summary.md").exists()


def test_tlbench_sweeper_is_the_default_except_where_a_preset_or_the_command_line_picks_another():
    sweepers = {
        (): "TlbenchSweeper",
        ("sweep=strategies",): "TlbenchSweeper",
        ("sweep=strategies", "hydra/sweeper=basic"): "BasicSweeper",
        ("sweep=lr_optuna",): "optuna",  # its own sweeper (or the stand-in naming what to install)
    }
    for overrides, target in sweepers.items():
        assert target in compose_with_hydra(*overrides).hydra.sweeper._target_, overrides


def test_the_grid_is_hydras_basic_grid():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tlbench.run import rounds

    arguments = [
        "strategy=freeze,full",
        "seed=range(0,3)",
        "data.per_class=8",
        "strategy=partial,full,freeze",
    ]
    parser = OverridesParser.create()
    expected = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]
    assert rounds.grid(rounds.axes_of(arguments, parser)) == expected
    assert len(expected) == 9  # the later list of strategies replaced the earlier one
