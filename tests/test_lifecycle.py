"""A run folder's life as a user meets it: force=true after a typo, SIGTERM from a scheduler, a re-run with
other settings, a folder that cannot be written, a CSV log across a resume, two sweeps on one folder.
Trainings are tiny (generated 32 px images, random-init tiny resnet, CPU). The command line runs in this
process (the `cli` fixture); the signal tests run `python -m tlbench.train` in a subprocess, as a scheduler
would, and wait for files, never for a time."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import make_image_folder, small, start_train, train_until_killed
from tlbench.analysis import report
from tlbench.run import folder
from tlbench.run.train import compose_config, prepare_folder, train

QUIET = ("trainer.enable_progress_bar=false", "logger=none", "trainer.max_epochs=1")
# Long enough for a machine 8x slower than a 2-core laptop under load; a test ends as soon as its event comes.
PATIENCE_S = 900


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})


# --- 1. force=true validates before it touches the folder ----------------------------------------------


def test_force_with_a_mistyped_path_keeps_the_finished_run(finished_run, run_copy, cli):
    done = cli(*finished_run.overrides, "force=true", "data.root=/no/such/dir", f"hydra.run.dir={run_copy}")
    assert done.returncode == 1 and "data.root=/no/such/dir does not exist" in done.stderr, done.stderr[
        -2000:
    ]
    assert json.loads((run_copy / "results.json").read_text())["status"] == "complete"
    assert (run_copy / "checkpoints" / "best.ckpt").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [("backbone.name=resnet17", "resnet18"), ("trainer.max_epochs=ten", "trainer.max_epochs")],
)
def test_force_with_a_bad_value_moves_nothing(override, message, finished_run, run_copy):
    before = sorted(p.name for p in run_copy.iterdir())
    with pytest.raises(ValueError, match=message):
        prepare_folder(compose_config([*finished_run.overrides, "force=true", override]), run_copy)
    assert sorted(p.name for p in run_copy.iterdir()) == before


def test_force_moves_the_previous_run_aside(finished_run, run_copy, caplog):
    caplog.set_level("INFO", logger="tlbench")
    prepare_folder(compose_config([*finished_run.overrides, "force=true"]), run_copy)
    assert not (run_copy / "results.json").exists() and not (run_copy / "checkpoints").exists()
    (moved,) = (run_copy / "replaced").iterdir()
    assert json.loads((moved / "results.json").read_text())["metrics"] == finished_run.results["metrics"]
    assert (moved / "checkpoints" / "best.ckpt").exists()
    assert str(moved) in caplog.text


# --- 2. signals ----------------------------------------------------------------------------------------


def wait_for(path: Path, process: subprocess.Popen, timeout: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def csv_epochs(run_dir: Path, column: str = "val/acc") -> list[int]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as handle:
        return sorted(int(row["epoch"]) for row in csv.DictReader(handle) if row.get(column))


@pytest.mark.parametrize(
    ("signum", "status"),
    # A Python process of its own each; SIGTERM (what schedulers send) in `make test`, SIGINT in test-all.
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
)
@pytest.mark.slow  # kept out of make test's time budget (make test-slow, CI)
def test_a_signal_saves_a_checkpoint_exits_128_plus_n_and_the_same_command_continues(
    signum, status, tmp_path, cli
):
    images = make_image_folder(tmp_path / "images", per_split={"train": 16, "val": 4})
    run_dir = tmp_path / "run"
    # 8 epochs of 4 steps: after epoch 0's checkpoint there is far more training left than the 20 ms it
    # takes to see the file and send the signal, so the signal lands mid-run on any machine.
    args = [
        *small(images),
        "data.batch_size=4",
        "trainer.max_epochs=8",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    ]
    process = start_train(args, tmp_path)
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)  # epoch 0 done: training is under way
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=PATIENCE_S)
    assert process.returncode == status, stderr[-3000:]
    record = (run_dir / "interrupted.txt").read_text()
    assert signal.Signals(signum).name in record and "last.ckpt" in record
    assert not (run_dir / "results.json").exists()
    found = report.find_runs(run_dir)
    assert [p.path for p in found.interrupted] == [run_dir] and not found.missing and not found.failed
    stopped_at = folder.checkpoint_position(run_dir / "checkpoints" / "last.ckpt")

    again = cli(*args, cwd=tmp_path)  # the same command, in this process: the resume needs no signal
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr + again.stdout
    assert json.loads((run_dir / "results.json").read_text())["status"] == "complete"
    assert not (run_dir / "interrupted.txt").exists()
    assert folder.checkpoint_position(run_dir / "checkpoints" / "last.ckpt")[0] == 7
    assert stopped_at[1] > 0
    assert csv_epochs(run_dir) == list(range(8))  # the epochs before the signal are still in metrics.csv


@pytest.mark.slow  # a Python process of its own
def test_sigterm_stops_a_sweep_and_its_report_lists_what_did_not_finish(tmp_path):
    make_image_folder(tmp_path / "images", per_split={"train": 16, "val": 4})
    args = [
        "-m",
        *small(Path("images")),
        "data.batch_size=4",
        "trainer.max_epochs=8",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "seed=0,1,2",
        "hydra.sweep.dir=sweep",
    ]
    process = start_train(args, tmp_path)
    sweep_dir = tmp_path / "sweep"
    deadline = time.monotonic() + PATIENCE_S
    while not list(sweep_dir.glob("*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=PATIENCE_S)
    assert process.returncode == 143, stderr[-3000:]
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"]["interrupted"] == 1, summary["counts"]
    assert ["seed=0" in p["run_dir"].split(",") for p in summary["interrupted"]] == [True]
    not_started = [p for p in summary["missing"] if p["why"].startswith("not started")]
    assert len(not_started) == 2


def test_signal_guard_turns_sigint_into_an_interruption():
    with folder.SignalGuard() as guard, pytest.raises(folder.RunInterrupted) as stopped:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert guard.received == signal.SIGINT and folder.exit_status(stopped.value.signum) == 130


# --- 3. a folder that holds a run with other settings ---------------------------------------------------


def test_a_rerun_with_another_learning_rate_is_refused_naming_the_change(finished_run, run_copy, cli):
    old = finished_run.results
    stamp = (run_copy / "results.json").stat().st_mtime_ns
    done = cli(*finished_run.overrides, "strategy.head_lr=0.5", f"hydra.run.dir={run_copy}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"strategy.head_lr: {old['config']['strategy']['head_lr']} → 0.5" in done.stderr
    assert "force=true" in done.stderr and "another folder" in done.stderr
    assert (run_copy / "results.json").stat().st_mtime_ns == stamp


def test_a_killed_run_is_not_resumed_with_other_settings(images, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    first = [*small(images), "logger=none", "trainer.max_epochs=2"]
    train_until_killed(first, run_dir, epoch=1, monkeypatch=monkeypatch)
    folder.save_config(run_dir, OmegaConf.to_container(compose_config(first), resolve=True))  # as main() does
    with pytest.raises(
        folder.RunFolderError, match=r"backbone.name: timm/test_resnet → resnet50.*force=true"
    ):
        prepare_folder(compose_config([*first, "backbone.name=resnet50"]), run_dir)
    # Settings that do not change the result (train.yaml's exclude_keys) are not a different run.
    assert prepare_folder(compose_config([*first, "trainer.enable_progress_bar=false"]), run_dir) is None


def test_a_resume_where_auto_resolves_otherwise_is_refused_naming_it(images, tmp_path, monkeypatch):
    """data.pipeline and optim.cuda_graph are execution keys (sweep folder names leave them out), but what
    they resolve to changes the run: the memory pipeline crops and shuffles differently from streaming."""
    run_dir = tmp_path / "run"
    first = [*small(images), "logger=none", "trainer.max_epochs=2", "data.pipeline=streaming"]
    train_until_killed(first, run_dir, epoch=1, monkeypatch=monkeypatch)
    resolved = json.loads((run_dir / folder.RUN_CONFIG_FILE).read_text())[folder.RESOLVED_KEY]
    assert resolved == {"pipeline": "streaming", "precision": "32-true", "cuda_graph": False}
    other = compose_config([*first, "data.pipeline=memory"])
    assert prepare_folder(other, run_dir) is None  # as main() does: the settings alone are the same run
    with pytest.raises(
        folder.RunFolderError,
        match=r"data.pipeline resolved to streaming, now memory.*\(data.pipeline=streaming\).*force=true",
    ):
        train(other, run_dir)
    stored = json.loads((run_dir / folder.RUN_CONFIG_FILE).read_text())
    assert stored[folder.RESOLVED_KEY] == resolved and stored["data"]["pipeline"] == "memory"


def test_the_resolved_precision_and_graph_choice_are_part_of_a_runs_identity(tmp_path):
    before = {"pipeline": "memory", "precision": "bf16-mixed", "cuda_graph": True}
    folder.keep_resolved(tmp_path, before, resuming=False)
    assert folder.saved_config(tmp_path) is None  # resolved values alone are not a config
    with pytest.raises(folder.RunFolderError) as refused:
        folder.keep_resolved(tmp_path, {**before, "precision": "32-true", "cuda_graph": False}, resuming=True)
    assert "trainer.precision resolved to bf16-mixed, now 32-true" in str(refused.value)
    assert "optim.cuda_graph resolved to True, now False" in str(refused.value)
    assert "(trainer.precision=bf16-mixed optim.cuda_graph=true)" in str(refused.value)
    folder.keep_resolved(tmp_path, {**before, "precision": "32-true"}, resuming=False)  # a fresh start
    assert folder.read_json(tmp_path / folder.RUN_CONFIG_FILE)[folder.RESOLVED_KEY]["precision"] == "32-true"


def test_setting_changes_ignore_execution_only_keys():
    old = {"seed": 0, "data": {"num_workers": 4, "root": "a"}, "optim": {"cuda_graph": False}}
    new = {"seed": 1, "data": {"num_workers": 0, "root": "a", "extra": 2}, "optim": {"cuda_graph": True}}
    # data.extra: a key an older tlbench did not have is not a change the user asked for
    assert folder.setting_changes(old, new, folder.EXECUTION_ONLY_KEYS) == ["seed: 0 → 1"]


# --- 4. folders that cannot be written stop the run at the start ---------------------------------------


@pytest.mark.parametrize("blocked", ["checkpoints", "tb"])
def test_a_file_where_a_folder_should_be_stops_the_run_before_training(blocked, images, tmp_path, cli):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / blocked).write_text("not a folder")
    args = [*small(images), "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=tensorboard"]
    done = cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{run_dir / blocked} is a file" in done.stderr and "Traceback" not in done.stderr
    assert "data:" not in done.stderr  # stopped before the data was even loaded


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder_stops_the_run_before_training(images, tmp_path, cli):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints").chmod(0o500)
    try:
        done = cli(*small(images), *QUIET, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    finally:
        (run_dir / "checkpoints").chmod(0o700)
    assert done.returncode == 1 and "cannot write into" in done.stderr and "chmod" in done.stderr


# --- 5. logs across a resume ---------------------------------------------------------------------------


def test_a_resumed_csv_log_keeps_the_epochs_before_the_kill(images, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    overrides = [*small(images), "logger=csv", "trainer.max_epochs=3", "trainer.enable_progress_bar=false"]
    train_until_killed(overrides, run_dir, epoch=2, monkeypatch=monkeypatch)
    assert csv_epochs(run_dir) == [0, 1]
    train(compose_config(overrides), run_dir)
    assert csv_epochs(run_dir) == [0, 1, 2]
    assert csv_epochs(run_dir, "train/loss_epoch") == [0, 1, 2]


# --- 6. two sweeps on one folder -----------------------------------------------------------------------


def test_a_claimed_folder_is_listed_as_running_until_its_holder_ends(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    handle = folder.claim_run(run_dir)
    try:
        assert folder.claim_run(run_dir) is None  # a second claim, even from this process, is refused
        found = report.find_runs(tmp_path)
        assert [p.path for p in found.running] == [run_dir] and f"pid {os.getpid()}" in found.running[
            0
        ].detail
    finally:
        handle.close()
    assert [p.path for p in report.find_runs(tmp_path).missing] == [run_dir]


def test_a_run_claimed_by_another_process_is_not_trained_twice(tmp_path, cli):
    make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    sweep_dir = tmp_path / "sweep"
    taken = sweep_dir / "seed0"
    taken.mkdir(parents=True)
    # This test stands for the other sweep, busy with seed=0. A claim is refused even to the process that
    # holds it, so the sweep below may run in this process too.
    handle = folder.claim_run(taken)
    try:
        args = [*small(Path("images")), *QUIET, "hydra.sweep.dir=sweep", "hydra.sweep.subdir=seed${seed}"]
        done = cli("-m", *args, "seed=0,1", cwd=tmp_path)
        single = cli(*small(Path("images")), *QUIET, f"hydra.run.dir={taken}", cwd=tmp_path)
    finally:
        handle.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"is being run by pid {os.getpid()}" in done.stdout + done.stderr
    assert not (taken / "results.json").exists() and (sweep_dir / "seed1" / "results.json").exists()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"]["running"] == 1 and summary["counts"]["missing"] == 0, summary["counts"]
    assert single.returncode == 1 and f"pid {os.getpid()}" in single.stderr


def test_a_resumed_tensorboard_log_has_each_epoch_once(images, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    overrides = [
        *small(images),
        "logger=tensorboard",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
    ]
    train_until_killed(overrides, run_dir, epoch=2, monkeypatch=monkeypatch)
    train(compose_config(overrides), run_dir)
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert len([e.step for e in events.Scalars("val/acc")]) == 3
    assert len({e.step for e in events.Scalars("val/acc")}) == 3
