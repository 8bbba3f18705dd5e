"""Sweeps of the real entry point, as a user runs them: `python -m tlbench.train -m ...` (its command line
run in this process by the `cli` fixture), on a generated image folder with a random-init tiny resnet at
32 px (a second or two a job). What issue 3 asks of a sweep: it runs end to end and reports mean ± std over
seeds, running it again does only what is not done yet, a failing job is kept and reported without
stopping the others and is retried by the next run, the submitit launcher works, and TensorBoard's HParams
tab gets one entry per run. `python -m tlbench.train -m` in a subprocess: test_lifecycle's SIGTERM test."""

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

from conftest import TINY, make_image_folder
from tlbench.run import sweep

# Cheap on a CPU: generated images at 32 px, no pretrained weights, one epoch, no data-loader workers.
CHEAP = (
    "data=imagefolder",
    "data.root=images",  # relative to the working directory (hydra.job.chdir=false): short folder names
    f"backbone.name={TINY}",
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


@pytest.fixture
def multirun(workdir: Path, cli):
    """`python -m tlbench.train -m <cheap settings> <overrides> hydra.sweep.dir=sweep` from workdir."""

    def run(*overrides: str, logger: str = "none"):
        return cli(
            "-m", *CHEAP, "trainer=cpu", f"logger={logger}", *overrides, "hydra.sweep.dir=sweep", cwd=workdir
        )

    return run


def output(done) -> str:
    return done.stdout + done.stderr


# Long enough for a machine 8x slower than a loaded 2-core laptop; the test ends when the command does.
PATIENCE_S = 900


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


@pytest.mark.slow  # kept out of make test's time budget (make test-slow, CI)
def test_sweep_reports_mean_and_std_and_a_rerun_does_only_what_is_not_done(workdir: Path, multirun):
    command = ("strategy=freeze,partial", "seed=0,1")
    sweep_dir = workdir / "sweep"

    first = multirun(*command)
    assert first.returncode == 0, output(first)[-3000:]
    assert len(run_dirs(sweep_dir)) == 4
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"complete": 4, "failed": 0, "missing": 0}
    assert [(g["strategy"], g["n"], g["seeds"]) for g in summary["groups"]] == [
        ("freeze", 2, [0, 1]),
        ("partial", 2, [0, 1]),
    ]
    assert all(g["test/acc"]["std"] is not None for g in summary["groups"])  # two seeds: a spread
    with (sweep_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["strategy"], r["seed"], r["status"]) for r in rows) == sorted(
        (s, str(seed), "complete") for s in ("freeze", "partial") for seed in (0, 1)
    )
    markdown = (sweep_dir / "summary.md").read_text()
    assert "4 of 4 runs complete, 0 failed, 0 missing." in markdown
    assert f"| images | {TINY} | all | partial | 2 |" in markdown
    assert f"| images | {TINY} | all | partial | 2 |" in first.stdout  # the table is printed too
    assert (sweep_dir / "accuracy_by_strategy.png").stat().st_size > 0
    finished = results_mtimes(sweep_dir)

    again = multirun("seed=0,1", "strategy=partial,freeze")  # the order does not matter
    assert again.returncode == 0, output(again)[-3000:]
    assert output(again).count("skipping: ") == 4
    assert results_mtimes(sweep_dir) == finished

    redo = job(sweep_dir, "strategy=partial", "seed=0")
    (redo / "results.json").unlink()  # as if the job had been killed after its last checkpoint
    third = multirun(*command)
    assert third.returncode == 0, output(third)[-3000:]
    assert output(third).count("skipping: ") == 3
    assert output(third).count("resuming from ") == 1
    now = results_mtimes(sweep_dir)
    assert [name for name in now if now[name] != finished[name]] == [redo.name]
    assert json.loads((sweep_dir / "summary.json").read_text())["counts"]["complete"] == 4

    forced = multirun("strategy=freeze", "seed=0", "force=true")  # the same folder: trained anew
    assert forced.returncode == 0, output(forced)[-3000:]
    assert "skipping: " not in output(forced) and "resuming from " not in output(forced)
    rerun = job(sweep_dir, "strategy=freeze", "seed=0")
    results = json.loads((rerun / "results.json").read_text())
    assert results["train_images_per_s"] > 0 and "val/acc" in results["metrics"]  # it trained
    assert sorted(p.name for p in (rerun / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    again = results_mtimes(sweep_dir)
    assert [name for name in again if again[name] != now[name]] == [rerun.name]


def test_a_failing_job_is_reported_and_the_others_finish_and_is_retried(workdir: Path, multirun):
    # Two jobs that differ in one value: stage4 is a stage of the tiny resnet, "nonexistent" is not.
    done = multirun("strategy=partial", "strategy.train_stages=stage4,nonexistent")
    sweep_dir = workdir / "sweep"

    assert done.returncode == 1, output(done)[-3000:]
    good = job(sweep_dir, "strategy.train_stages=stage4")
    bad = job(sweep_dir, "strategy.train_stages=nonexistent")
    assert "1 failed and 0 missing of 2 jobs" in output(done)
    results = json.loads((good / "results.json").read_text())
    assert results["status"] == "complete" and results["trainable_stages"] == ["stage4", "head"]
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

    again = multirun("strategy=partial", "strategy.train_stages=stage4,nonexistent")
    assert again.returncode == 1 and output(again).count("skipping: ") == 1  # the finished job
    assert (bad / "error.txt").read_text().startswith("Traceback")  # retried, failed again, kept


@pytest.mark.slow  # submitit starts a Python process per job
@pytest.mark.skipif(
    not sweep.is_installed("hydra_plugins.hydra_submitit_launcher"), reason="pip install 'tlbench[sweep]'"
)
def test_submitit_local_launcher_runs_the_sweep(workdir: Path, multirun):
    done = multirun("hydra/launcher=local", "strategy=freeze", "seed=0,1")
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


def test_tensorboard_gets_one_hparams_entry_per_run_with_its_test_metrics(workdir: Path, multirun):
    done = multirun("strategy=freeze,full", "seed=3", logger="tensorboard")
    sweep_dir = workdir / "sweep"

    assert done.returncode == 0, output(done)[-3000:]
    runs = run_dirs(sweep_dir)
    assert len(runs) == 2
    for run in runs:
        hparams, scalars = hparams_of(run)
        results = json.loads((run / "results.json").read_text())
        assert hparams["strategy"] == results["params"]["strategy"]
        assert hparams["backbone"] == TINY
        assert hparams["seed"] == 3
        assert scalars["hp/test_acc"] == pytest.approx(results["metrics"]["test/acc"])


@pytest.mark.slow  # a real `python -m tlbench.train -m` whose joblib workers each start Python
@pytest.mark.skipif(
    not sweep.is_installed("hydra_plugins.hydra_joblib_launcher"), reason="pip install 'tlbench[sweep]'"
)
def test_joblib_jobs_run_side_by_side_one_gpu_each(workdir: Path):
    # Two visible "GPUs" by name only: pinning never touches CUDA, and trainer=cpu trains on the CPU.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "TMPDIR": str(workdir)}
    command = [*CHEAP, "trainer=cpu", "logger=none", "hydra/launcher=gpus", "hydra.launcher.n_jobs=2"]
    command += ["strategy=freeze,partial,full", "hydra.sweep.dir=sweep"]
    done = subprocess.run(
        [sys.executable, "-m", "tlbench.train", "-m", *command],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=PATIENCE_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, output(done)[-3000:]
    runs = run_dirs(workdir / "sweep")
    assert len(runs) == 3 and all((run / "results.json").exists() for run in runs)
    # The jobs' Hydra logs (train.log) say which GPU each worker process was pinned to, once per process.
    logs = "\n".join((run / "train.log").read_text() for run in runs)
    pinned = {line.split("] - ")[1] for line in logs.splitlines() if "runs on GPU" in line}
    assert sorted(line.split()[-1] for line in pinned) == ["0", "1"]  # two workers, one GPU each


@pytest.mark.slow  # kept out of make test's time budget (make test-slow, CI)
def test_job_folders_name_what_varies_and_an_extended_sweep_skips_what_is_done(workdir: Path, multirun):
    absolute = f"data.root={workdir / 'images'}"  # the path a user types: never spelled into folder names
    sweep_dir = workdir / "sweep"

    first = multirun(absolute, "strategy=freeze", "seed=0,1")
    assert first.returncode == 0, output(first)[-3000:]
    assert [d.name for d in run_dirs(sweep_dir)] == ["seed=0", "seed=1"]
    multirun_yaml = (sweep_dir / "multirun.yaml").read_text()
    assert absolute in multirun_yaml  # the constant settings live in the sweep folder's config
    finished = results_mtimes(sweep_dir)

    more = multirun(absolute, "strategy=freeze,partial", "seed=0,1,2")  # another seed and another strategy
    assert more.returncode == 0, output(more)[-3000:]
    assert output(more).count("skipping: ") == 2
    assert {k: v for k, v in results_mtimes(sweep_dir).items() if k in finished} == finished
    assert [d.name for d in run_dirs(sweep_dir)] == [
        "seed=0", "seed=1", "strategy=freeze,seed=2", "strategy=partial,seed=0", "strategy=partial,seed=1",
        "strategy=partial,seed=2",
    ]  # fmt: skip
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert [(g["strategy"], g["n"]) for g in summary["groups"]] == [("freeze", 3), ("partial", 3)]
