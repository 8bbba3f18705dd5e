"""SIGTERM to a sweep stops it the same way whatever launches its jobs: every launcher tlbench ships (the
basic one, joblib through conf/hydra/launcher/gpus.yaml, submitit through local.yaml, whose local executor
runs the same code path as SLURM). After the signal each started job has its last.ckpt and interrupted.txt,
the sweep folder's report lists them, the command exits 143 with one line saying so, no process of the
sweep is left, and the same command then resumes the interrupted jobs and skips the finished one.

`python -m tlbench.train -m` in a subprocess, as a scheduler runs it; the tests wait for files, never for a
time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import make_image_folder, small, start_train
from tlbench.run import folder, stopping

# Long enough for a machine 8x slower than a 2-core laptop under load; a test ends as soon as its event comes.
PATIENCE_S = 900
LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=gpus", "hydra.launcher.n_jobs=2"],
    "submitit": ["hydra/launcher=local"],
}


def finish(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "tlbench.train", *args],
        cwd=cwd,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def sweep_processes(sweep_pid: int) -> list[int]:
    """Live processes started for the sweep of `sweep_pid` (its workers carry the variable it set)."""
    marker = f"{stopping.SWEEP_PID_VARIABLE}={sweep_pid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != sweep_pid:
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # ended meanwhile, or not ours
                pass
    return found


def job_dir(sweep_dir: Path, seed: int) -> Path:
    (found,) = [p for p in sweep_dir.iterdir() if f"seed={seed}" in p.name.split(",")]
    return found


@pytest.mark.slow  # several Python processes, a few tiny trainings each
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="counts the sweep's processes in /proc")
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_sigterm_stops_every_job_of_a_sweep_and_the_same_command_continues(launcher, tmp_path):
    make_image_folder(tmp_path / "images", per_split={"train": 16, "val": 4})
    sweep_dir = tmp_path / "sweep"
    common = [
        *small(Path("images")),
        "data.batch_size=4",
        "trainer.max_epochs=8",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "hydra.sweep.dir=sweep",
        *LAUNCHERS[launcher],
    ]
    finish(["-m", *common, "seed=0"], tmp_path)  # one job of the sweep finished before
    finished = job_dir(sweep_dir, 0) / "results.json"
    stamp = finished.stat().st_mtime_ns
    args = ["-m", *common, "seed=0,1,2"]

    process = start_train(args, tmp_path)
    deadline = time.monotonic() + PATIENCE_S
    while not list(sweep_dir.glob("*seed=[12]*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=PATIENCE_S)
    assert process.returncode == 143, stdout[-2000:] + stderr[-3000:]
    assert "the sweep was stopped by a signal" in stdout + stderr

    # Every job of this sweep ended with it (joblib's workers used to train on as orphans).
    deadline = time.monotonic() + 60
    while sweep_processes(process.pid):
        assert time.monotonic() < deadline, f"left running: {sweep_processes(process.pid)}"
        time.sleep(0.2)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"]["complete"] == 1 and not summary["counts"]["failed"], summary["counts"]
    interrupted = [sweep_dir / p["run_dir"] for p in summary["interrupted"]]
    assert interrupted, summary
    resumable = []
    for run_dir in interrupted:
        record = (run_dir / "interrupted.txt").read_text()
        assert "SIGTERM" in record
        # A job stopped while training holds last.ckpt; one stopped in its data setup (joblib starts two at
        # once, and the signal comes when the first has a checkpoint) had nothing to save, and says so.
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            assert folder.checkpoint_position(last) is not None
            resumable.append(run_dir)
        else:
            assert "no checkpoint yet" in record, record
    assert resumable, "the job whose checkpoint the test waited for was not saved"
    # A job that had not started (basic: one after the other; joblib: the next in a free worker) is missing.
    assert len(interrupted) + summary["counts"]["missing"] == 2
    assert all(p["why"].startswith("not started") for p in summary["missing"]), summary["missing"]

    again = finish(args, tmp_path)
    assert finished.stat().st_mtime_ns == stamp  # the finished job was skipped, not re-run
    for run_dir in resumable:
        assert "resuming from" in (run_dir / "train.log").read_text()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"]["complete"] == 3, again.stdout[-2000:]
    assert not (sweep_dir / stopping.STOP_FILE).exists()


JOB = """
import signal, sys, time
from pathlib import Path
from tlbench.run import folder
job = Path(sys.argv[1])
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
with folder.claimed(job):
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.01)
(job / "stopped").write_text("yes" if stopped else "no")
"""


def test_a_signal_to_the_sweep_reaches_the_jobs_it_started_and_starts_no_more(tmp_path):
    """StopSweepOnSignal in this process: a job of its own running in another process (a launcher's
    worker holding its run folder's claim) gets SIGTERM; a job that starts afterwards learns from the sweep
    folder that it must not (stop_requested), and a new start of the sweep clears that."""
    sweep_dir = tmp_path / "sweep"
    job = sweep_dir / "seed=0"
    child = subprocess.Popen([sys.executable, "-c", JOB, str(job)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    callback = stopping.StopSweepOnSignal()
    callback.on_multirun_start(config)
    try:
        assert stopping.stop_requested() is None and stopping.stop_requested(sweep_dir) is None
        os.kill(os.getpid(), signal.SIGTERM)
        child.wait(timeout=PATIENCE_S)
        assert (job / "stopped").read_text() == "yes"
        assert stopping.stop_requested() == signal.SIGTERM
        with pytest.raises(SystemExit) as again:  # asked twice: exit at once, without waiting
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert again.value.code == 143
    finally:
        callback.on_multirun_end(config)
        stopping._stopped_by = None
    assert signal.getsignal(signal.SIGTERM) is not callback.stop  # handlers restored
    assert stopping.stop_requested(sweep_dir) == signal.SIGTERM  # what a job's process reads
    callback.on_multirun_start(config)  # the same command again continues the sweep
    callback.on_multirun_end(config)
    assert stopping.stop_requested(sweep_dir) is None
