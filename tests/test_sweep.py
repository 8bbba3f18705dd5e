"""Sweeps of the real entry point, as a user runs them: `python -m tlbench.train -m ...` in a subprocess,
on a generated image folder with a random-init resnet18 at 32 px (a few seconds a job, plus about ten
seconds to start Python). What issue 3 asks of a sweep: it runs end to end and reports mean ± std over
seeds, running it again does only what is not done yet, a failing job is kept and reported without
stopping the others, the submitit launcher works, and TensorBoard's HParams tab gets one entry per run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import make_image_folder
from tlbench.run import sweep

# Cheap on a CPU: generated images at 32 px, no pretrained weights, one epoch, no data-loader workers.
CHEAP = (
    "data=imagefolder",
    "data.root=images",  # relative to the working directory (hydra.job.chdir=false): short folder names
    "backbone=resnet18",
    "backbone.weights=null",
    "data.image_size=32",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory holding `images/{train,val}/{cat,dog}`; sweeps run from here."""
    make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    return tmp_path


def multirun(
    workdir: Path, *overrides: str, logger: str = "none", timeout: int = 600
) -> subprocess.CompletedProcess:
    """`python -m tlbench.train -m <cheap settings> <overrides> hydra.sweep.dir=sweep` from workdir."""
    command = [*CHEAP, f"logger={logger}", *overrides, "hydra.sweep.dir=sweep"]
    return subprocess.run(
        [sys.executable, "-m", "tlbench.train", "-m", *command],
        cwd=workdir,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # the same CPU run on a machine with a GPU
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Every job folder of a sweep (Hydra writes .hydra/ into each)."""
    return sorted(p.parent for p in sweep_dir.glob("*/.hydra"))


def job(sweep_dir: Path, *settings: str) -> Path:
    """The one job folder whose name (its sorted overrides) includes every `key=value` of settings."""
    found = [d for d in run_dirs(sweep_dir) if set(settings) <= set(d.name.split(","))]
    assert len(found) == 1, (settings, [d.name for d in run_dirs(sweep_dir)])
    return found[0]


def results_mtimes(sweep_dir: Path) -> dict[str, int]:
    return {d.name: (d / "results.json").stat().st_mtime_ns for d in run_dirs(sweep_dir)}


def test_sweep_reports_mean_and_std_and_a_rerun_does_only_what_is_not_done(workdir: Path):
    command = ("strategy=freeze,partial,full", "seed=0,1")
    sweep_dir = workdir / "sweep"

    first = multirun(workdir, *command)
    assert first.returncode == 0, output(first)[-3000:]
    assert len(run_dirs(sweep_dir)) == 6
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"complete": 6, "failed": 0, "missing": 0}
    assert [(g["strategy"], g["n"], g["seeds"]) for g in summary["groups"]] == [
        ("freeze", 2, [0, 1]),
        ("partial", 2, [0, 1]),
        ("full", 2, [0, 1]),
    ]
    assert all(g["test/acc"]["std"] is not None for g in summary["groups"])  # two seeds: a spread
    with (sweep_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["strategy"], r["seed"], r["status"]) for r in rows) == sorted(
        (s, str(seed), "complete") for s in ("freeze", "partial", "full") for seed in (0, 1)
    )
    markdown = (sweep_dir / "summary.md").read_text()
    assert "6 of 6 runs complete, 0 failed, 0 missing." in markdown
    assert "| images | resnet18 | all | partial | 2 |" in markdown
    assert (sweep_dir / "accuracy_by_strategy.png").stat().st_size > 0
    finished = results_mtimes(sweep_dir)

    again = multirun(workdir, "seed=0,1", "strategy=freeze,partial,full")  # the order does not matter
    assert again.returncode == 0, output(again)[-3000:]
    assert output(again).count("skipping: ") == 6
    assert results_mtimes(sweep_dir) == finished

    redo = job(sweep_dir, "strategy=partial", "seed=0")
    (redo / "results.json").unlink()  # as if the job had been killed after its last checkpoint
    third = multirun(workdir, *command)
    assert third.returncode == 0, output(third)[-3000:]
    assert output(third).count("skipping: ") == 5
    assert output(third).count("resuming from ") == 1
    now = results_mtimes(sweep_dir)
    assert [name for name in now if now[name] != finished[name]] == [redo.name]
    assert json.loads((sweep_dir / "summary.json").read_text())["counts"]["complete"] == 6

    forced = multirun(workdir, "strategy=freeze", "seed=0", "force=true")  # the same folder: trained anew
    assert forced.returncode == 0, output(forced)[-3000:]
    assert "skipping: " not in output(forced) and "resuming from " not in output(forced)
    rerun = job(sweep_dir, "strategy=freeze", "seed=0")
    results = json.loads((rerun / "results.json").read_text())
    assert results["train_images_per_s"] > 0 and "val/acc" in results["metrics"]  # it trained
    assert sorted(p.name for p in (rerun / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    again = results_mtimes(sweep_dir)
    assert [name for name in again if again[name] != now[name]] == [rerun.name]


def test_a_failing_job_is_reported_and_the_others_finish(workdir: Path):
    # Two jobs that differ in one value: layer4 is a resnet18 stage, "nonexistent" is not.
    done = multirun(workdir, "strategy=partial", "strategy.train_stages=layer4,nonexistent")
    sweep_dir = workdir / "sweep"

    assert done.returncode == 1, output(done)[-3000:]
    good = job(sweep_dir, "strategy.train_stages=layer4")
    bad = job(sweep_dir, "strategy.train_stages=nonexistent")
    assert "1 failed and 0 missing of 2 jobs" in output(done)
    results = json.loads((good / "results.json").read_text())
    assert results["status"] == "complete" and results["trainable_stages"] == ["layer4", "head"]
    assert not (good / "error.txt").exists()
    assert not (bad / "results.json").exists()
    error = (bad / "error.txt").read_text()
    assert error.startswith("Traceback") and "nonexistent" in error.strip().splitlines()[-1]
    markdown = (sweep_dir / "summary.md").read_text()
    assert "1 of 2 runs complete, 1 failed, 0 missing." in markdown
    failed = markdown.split("## Failed runs (1)")[1].split("## Missing runs")[0]
    assert f"`{bad.name}`" in failed and "nonexistent" in failed
    with (sweep_dir / "results.csv").open() as handle:
        status = {Path(r["run_dir"]).name: r["status"] for r in csv.DictReader(handle)}
    assert status == {good.name: "complete", bad.name: "failed"}


@pytest.mark.skipif(
    not sweep.is_installed("hydra_plugins.hydra_submitit_launcher"), reason="pip install 'tlbench[sweep]'"
)
def test_submitit_local_launcher_runs_the_sweep(workdir: Path):
    done = multirun(workdir, "hydra/launcher=local", "strategy=freeze", "seed=0,1")
    sweep_dir = workdir / "sweep"

    assert done.returncode == 0, output(done)[-3000:]
    assert len(run_dirs(sweep_dir)) == 2
    for seed in (0, 1):
        results = json.loads((job(sweep_dir, f"seed={seed}") / "results.json").read_text())
        assert results["status"] == "complete" and results["params"]["seed"] == seed
    assert list((sweep_dir / ".submitit").iterdir())  # each job ran through submitit, logs kept there
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"]["complete"] == 2 and summary["groups"][0]["n"] == 2


def hparams_of(run: Path) -> tuple[dict, dict[str, float]]:
    """The HParams-tab entry a run wrote into tb/ (its hyperparameters) and the hp/ scalars beside it."""
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    contents = events.PluginTagToContent("hparams")
    starts = [
        plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        for content in contents.values()
    ]
    starts = [s for s in starts if s.hparams]
    assert len(starts) == 1, f"expected one HParams session in {run / 'tb'}, found {len(starts)}"
    hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in starts[0].hparams.items()}
    scalars = {t: events.Scalars(t)[-1].value for t in events.Tags()["scalars"] if t.startswith("hp/")}
    return hparams, scalars


def test_tensorboard_gets_one_hparams_entry_per_run_with_its_test_metrics(workdir: Path):
    done = multirun(workdir, "strategy=freeze,full", "seed=3", logger="tensorboard")
    sweep_dir = workdir / "sweep"

    assert done.returncode == 0, output(done)[-3000:]
    runs = run_dirs(sweep_dir)
    assert len(runs) == 2
    for run in runs:
        hparams, scalars = hparams_of(run)
        results = json.loads((run / "results.json").read_text())
        assert hparams["strategy"] == results["params"]["strategy"]
        assert hparams["backbone"] == "resnet18"
        assert hparams["seed"] == 3
        assert scalars["hp/test_acc"] == pytest.approx(results["metrics"]["test/acc"])
