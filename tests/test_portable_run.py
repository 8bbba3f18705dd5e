"""A run folder is position-independent: copied with `cp -r`, moved to another disk, or named by a relative
path from any directory, it resumes, tests and reports its own checkpoints. Lightning stores absolute paths
in last.ckpt (ModelCheckpoint's dirpath, best_model_path, best_k_models); tlbench re-bases them on load.
Tiny trainings (generated 32 px images, random-init tiny resnet, CPU)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO, make_image_folder, small, train_until_killed
from tlbench.analysis import report
from tlbench.run.checkpoints import RunCheckpoint
from tlbench.run.train import compose_config, run, train

QUIET = ["trainer.enable_progress_bar=false", "logger=none", "trainer.max_epochs=1"]


def rerun_without_results(cli, overrides: list[str], run_dir: Path):
    """The same command in a folder whose test never finished (results.json gone): it resumes at the end
    of training from last.ckpt and tests best.ckpt."""
    (run_dir / "results.json").unlink()
    return cli(*overrides, f"hydra.run.dir={run_dir}")


def test_a_copied_run_tests_its_own_best_checkpoint(finished_run, run_copy, tmp_path, cli):
    original = run_copy  # a folder of its own, so it may be damaged
    copy = Path(shutil.copytree(original, tmp_path / "copy"))
    # Had the copy tested the original's best.ckpt (main did, then failed "is not in the subpath of"), this
    # garbage would be what it reads.
    (original / "checkpoints" / "best.ckpt").write_bytes(b"not the copy's checkpoint")
    done = rerun_without_results(cli, finished_run.overrides, copy)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((copy / "results.json").read_text())
    assert results["status"] == "complete" and results["best_checkpoint"] == "checkpoints/best.ckpt"
    assert results["metrics"]["test/acc"] == finished_run.results["metrics"]["test/acc"]


def test_a_moved_run_resumes_and_tests_in_its_new_place(finished_run, run_copy, tmp_path, cli):
    moved = Path(shutil.move(run_copy, tmp_path / "elsewhere" / "run"))
    done = rerun_without_results(cli, finished_run.overrides, moved)  # main: "Checkpoint file not found"
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((moved / "results.json").read_text())
    assert results["metrics"]["test/acc"] == finished_run.results["metrics"]["test/acc"]


def test_checkpoint_state_written_elsewhere_is_rebased_onto_the_folder_it_loads_in(tmp_path):
    """What a resumed run keeps of its best checkpoint after a move: all of it (Lightning alone keeps only
    best_model_path, the old folder's file, and forgets the best score, so the next epoch replaces the
    best checkpoint whatever its score)."""
    old, new = "/old/place/run/checkpoints", str(tmp_path / "checkpoints")
    saved = {
        "monitor": "val/acc", "best_model_score": 0.75, "best_model_path": f"{old}/best.ckpt",
        "current_score": 0.5, "dirpath": old, "best_k_models": {f"{old}/best.ckpt": 0.75},
        "kth_best_model_path": f"{old}/best.ckpt", "kth_value": 0.75, "last_model_path": "",
    }  # fmt: skip
    checkpoint = RunCheckpoint(new, "best", "val/acc", mode="max")
    checkpoint.load_state_dict(saved)
    assert checkpoint.best_model_score == 0.75
    assert checkpoint.best_model_path == f"{new}/best.ckpt"
    assert checkpoint.best_k_models == {f"{new}/best.ckpt": 0.75}
    # Checkpoints written by Lightning's ModelCheckpoint (older tlbench) restore into it, and back.
    assert checkpoint.state_key == RunCheckpoint.__mro__[1](new, "best", "val/acc", mode="max").state_key


def test_a_killed_run_moved_elsewhere_resumes_with_its_best_score(tmp_path, monkeypatch, caplog):
    images = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    overrides = [*small(images), "trainer.enable_progress_bar=false", "logger=none", "trainer.max_epochs=2"]
    train_until_killed(overrides, tmp_path / "run", epoch=1, monkeypatch=monkeypatch)
    moved = Path(shutil.move(tmp_path / "run", tmp_path / "other" / "run"))
    caplog.set_level("INFO", logger="tlbench")
    results = train(compose_config(overrides), moved)
    assert "resuming from" in caplog.text and "dirpath has changed" not in caplog.text
    assert results["best_checkpoint"] == "checkpoints/best.ckpt" and (moved / "results.json").exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["relative from elsewhere", "relative from the repo root", "absolute"])
def test_the_python_api_takes_a_relative_or_absolute_run_dir_from_any_directory(where, tmp_path, monkeypatch):
    images = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    target = tmp_path / "some" / "run"
    if where == "relative from elsewhere":
        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")
        run_dir = os.path.join("..", "some", "run")
    elif where == "relative from the repo root":
        monkeypatch.chdir(REPO)
        run_dir = os.path.relpath(target, REPO)
    else:
        monkeypatch.chdir(tmp_path)
        run_dir = str(target)
    results = run([*small(images), *QUIET], run_dir=run_dir)  # main: "… is not in the subpath of …"
    assert results["best_checkpoint"] == "checkpoints/best.ckpt"
    assert json.loads((target / "results.json").read_text())["status"] == "complete"


def test_a_moved_sweep_folder_reports_the_same(finished_run, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(finished_run.run_dir, sweep_dir / "seed=0")
    interrupted = Path(shutil.copytree(finished_run.run_dir, sweep_dir / "seed=1"))
    (interrupted / "results.json").unlink()
    (interrupted / "interrupted.txt").write_text("interrupted by SIGTERM; run the same command again\n")
    before = report.find_runs(sweep_dir)
    moved = Path(shutil.move(sweep_dir, tmp_path / "disk2" / "sweep"))
    assert report.main([str(moved)]) in (0, None)
    after = report.find_runs(moved)
    assert [r.path.relative_to(moved) for r in after.runs] == [
        r.path.relative_to(sweep_dir) for r in before.runs
    ]
    assert [p.path.name for p in after.interrupted] == ["seed=1"]
    assert "seed=0" in (moved / "results.csv").read_text()
