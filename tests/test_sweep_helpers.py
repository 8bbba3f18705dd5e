"""Sweep machinery without training: run-folder names, failures on disk, GPU pinning, the DDP guard, the
launcher and sweep presets, and whole multiruns of a stand-in app (seconds each, CPU only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

import tlbench
from tlbench.run import sweep

REPO = Path(__file__).resolve().parents[1]
SRC = Path(tlbench.__file__).resolve().parents[1]

# The `hydra:` block of conf/train.yaml that sweeps rely on (docs/SWEEPS.md shows the same).
HYDRA_BLOCK = """
hydra:
  job:
    chdir: false
    config:
      override_dirname:
        exclude_keys: [force, sweep, data.num_workers, trainer.enable_progress_bar]
  sweep:
    dir: outputs/multirun/${hydra.runtime.choices.sweep}
    subdir: ${tlbench.dirname:${hydra.job.override_dirname}}
  callbacks:
    plugins:
      _target_: tlbench.run.sweep.ExplainMissingPlugin
    report:
      _target_: tlbench.run.sweep.ReportOnMultirunEnd
"""

# A stand-in for tlbench.run.train with the same contract: skip a complete results.json unless force=true,
# keep a failure in error.txt and go on with the sweep.
APP = """
import json, os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from tlbench.run import sweep


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    gpu = sweep.pin_job_to_gpu(hydra_cfg)
    done = run_dir / "results.json"
    if done.exists() and not cfg.force:
        print("SKIP", run_dir.name, flush=True)
        return json.loads(done.read_text())["metrics"]["val/acc"]
    sweep.clear_failure(run_dir)
    print("RUN", run_dir.name, "pid", os.getpid(), "gpu", gpu, flush=True)
    try:
        if cfg.fail:
            raise ValueError("this job was asked to fail")
        acc = {"freeze": 0.8, "partial": 0.85, "full": 0.9}[cfg.strategy.name] + cfg.seed / 100
        params = {"data": "toy", "backbone": "tiny", "strategy": cfg.strategy.name, "seed": cfg.seed}
        results = {"status": "complete", "params": params, "metrics": {"test/acc": acc, "val/acc": acc}}
        done.write_text(json.dumps(results))
        return acc
    except Exception as error:
        sweep.record_failure(run_dir, error)
        return None


if __name__ == "__main__":
    main()
"""


def has_plugin(module: str) -> bool:
    return sweep.is_installed(f"hydra_plugins.{module}")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The stand-in app in tmp_path, composing the repo's conf/ (strategy, sweep and launcher presets)."""
    (tmp_path / "conf").mkdir()
    primary = """
    defaults:
      - strategy: partial
      - sweep: adhoc
      - _self_
    seed: 0
    fail: false
    force: false
    """
    searchpath = f"\n  searchpath: [file://{REPO / 'conf'}]"
    block = HYDRA_BLOCK.replace("hydra:", "hydra:" + searchpath, 1)
    (tmp_path / "conf" / "train.yaml").write_text(textwrap.dedent(primary) + block)
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def multirun(app: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environ |= {"PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run(
        [sys.executable, "app.py", "-m", *overrides],
        cwd=app,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def ran(done: subprocess.CompletedProcess, word: str = "RUN") -> list[str]:
    return sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith(word + " "))


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


def compose_app(app: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(app / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_sweep_presets_set_the_grid(app: Path):
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
        cfg = compose_app(app, f"sweep={name}")
        assert dict(cfg.hydra.sweeper.params) == grid


def test_slurm_preset_exposes_gpus_time_and_partition(app: Path):
    cfg = compose_app(
        app, "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"
    )
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 2, 120)
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.tasks_per_node) == (8, 32, 1)


def test_gpus_preset_runs_one_job_per_gpu(app: Path):
    launcher = compose_app(app, "hydra/launcher=gpus").hydra.launcher
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


# --- whole multiruns of the stand-in app --------------------------------------------------------------


def test_failed_job_does_not_stop_the_sweep_and_a_rerun_does_only_what_is_missing(app: Path):
    first = multirun(app, "strategy=freeze,full", "fail=false,true")
    sweep_dir = app / "outputs" / "multirun" / "adhoc"
    assert first.returncode == 1, first.stderr  # the report lists the failures; the exit status says so
    assert ran(first) == [f"fail={f},strategy={s}" for f in ("False", "True") for s in ("freeze", "full")]
    error = (sweep_dir / "fail=True,strategy=full" / "error.txt").read_text()
    assert error.strip().endswith("ValueError: this job was asked to fail")
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"complete": 2, "failed": 2, "missing": 0}
    assert (sweep_dir / "accuracy_by_strategy.png").exists()

    again = multirun(app, "fail=false,true", "strategy=freeze,full")  # same sweep, arguments reordered
    assert ran(again, "SKIP") == ["fail=False,strategy=freeze", "fail=False,strategy=full"]
    assert ran(again) == ["fail=True,strategy=freeze", "fail=True,strategy=full"]

    forced = multirun(app, "strategy=freeze", "fail=false", "force=true")
    assert ran(forced) == ["fail=False,strategy=freeze"]


def test_preset_sweep_gets_its_own_folder_and_a_clean_exit(app: Path):
    done = multirun(app, "sweep=strategies", "seed=0,1")
    assert done.returncode == 0, done.stderr
    sweep_dir = app / "outputs" / "multirun" / "strategies"
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == [
        f"seed={seed},strategy={s}" for seed in (0, 1) for s in ("freeze", "full", "partial")
    ]
    assert "| toy | tiny | all | full | 2 | 0.9050 ± 0.0071 |" in done.stdout


@pytest.mark.skipif(not has_plugin("hydra_submitit_launcher"), reason="pip install 'tlbench[sweep]'")
def test_submitit_local_executor_runs_the_jobs(app: Path):
    done = multirun(app, "hydra/launcher=local", "strategy=freeze,full")
    assert done.returncode == 0, done.stderr
    sweep_dir = app / "outputs" / "multirun" / "adhoc"
    assert (sweep_dir / "strategy=freeze" / "results.json").exists()
    assert (sweep_dir / "strategy=full" / "results.json").exists()
    assert list((sweep_dir / ".submitit").iterdir())  # submitit's own logs, one folder per job


@pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"), reason="pip install 'tlbench[sweep]'")
def test_joblib_jobs_run_side_by_side_one_gpu_each(app: Path, tmp_path: Path):
    # Two visible "GPUs" by name only: pinning never touches CUDA, so this runs on a CPU machine.
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "TMPDIR": str(tmp_path)}
    done = multirun(
        app, "hydra/launcher=gpus", "hydra.launcher.n_jobs=2", "strategy=freeze,partial,full", env=env
    )
    assert done.returncode == 0, done.stderr
    jobs = [line.split() for line in done.stdout.splitlines() if line.startswith("RUN ")]
    gpu_of_pid = {job[3]: job[5] for job in jobs}
    assert len(jobs) == 3
    assert sorted(set(gpu_of_pid.values())) == ["0", "1"]  # two workers, one GPU each
