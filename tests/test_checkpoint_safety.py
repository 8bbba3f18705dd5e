"""Checkpoints are never the reason a run is lost: a save that fails (a full disk) keeps the previous file
whole, leaves no partial file and says so in one line; a checkpoint that cannot be read at resume or test is
set aside (named in one line) and the run goes on from the best state that remains. Tiny trainings."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder, small
from tlbench.run import checkpoints

QUIET = ["trainer.enable_progress_bar=false", "logger=none"]


def epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def checkpoint_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


# --- a failed save -------------------------------------------------------------------------------------


@pytest.mark.parametrize("error_txt_too", [False, True], ids=["checkpoint", "checkpoint-and-error.txt"])
def test_a_full_disk_keeps_the_previous_checkpoints_and_says_so_in_one_line(
    error_txt_too, tmp_path, cli, monkeypatch
):
    images = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    run_dir = tmp_path / "run"
    real_save = torch.save

    def disk_full_after_epoch_0(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch", 0) >= 1:
            handle.write(b"PK\x03\x04 half a checkpoint")  # what reached the disk before it filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_after_epoch_0)
    if error_txt_too:  # the same full disk refuses error.txt
        from tlbench.run import sweep

        def full(path, content):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(sweep, "write_atomic", full)
    done = cli(*small(images), *QUIET, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(errors) <= 2, (
        done.stderr
    )  # the error, where its traceback is
    assert (
        errors[0].startswith("error: cannot save the checkpoint") and "No space left on device" in errors[0]
    )
    assert "MB free there" in errors[0] and "run the same command again" in errors[0]
    assert str(run_dir / "checkpoints") in errors[0]
    # Epoch 0's checkpoints are whole, and nothing half-written lies beside them.
    assert checkpoint_files(run_dir) == ["best.ckpt", "last.ckpt"]
    assert (
        epoch_of(run_dir / "checkpoints" / "best.ckpt") == 0
        and epoch_of(run_dir / "checkpoints" / "last.ckpt") == 0
    )
    assert (run_dir / "error.txt").exists() != error_txt_too

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the same command continues
    again = cli(*small(images), *QUIET, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stdout + again.stderr


def test_a_checkpoint_save_the_os_refuses_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    writer = checkpoints.AtomicCheckpointIO()
    writer.save_checkpoint({"epoch": 0, "state_dict": {}}, target)

    def refused(obj, handle, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", refused)
    with pytest.raises(
        checkpoints.CheckpointWriteError, match=r"last\.ckpt \(Permission denied; .* writable"
    ):
        writer.save_checkpoint({"epoch": 1, "state_dict": {}}, target)
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"] and epoch_of(target) == 0


# --- an unreadable checkpoint --------------------------------------------------------------------------


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x80\x04garbage, not a checkpoint" * 100)


def empty(path: Path) -> None:
    path.write_bytes(b"")


def text(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")  # an LFS pointer


DAMAGE = {"truncated": truncated, "garbage": garbage, "zero-byte": empty, "lfs-pointer": text}


@pytest.mark.parametrize(
    ("damaged", "how", "continues_from"),
    [
        (["last.ckpt"], "truncated", "best.ckpt"),
        (["last.ckpt"], "garbage", "best.ckpt"),
        (["last.ckpt"], "zero-byte", "best.ckpt"),
        (["last.ckpt", "best.ckpt"], "truncated", None),  # nothing left: it starts over
        (["best.ckpt"], "lfs-pointer", "last.ckpt"),  # the best is damaged: tested on the last instead
    ],
)
def test_an_unreadable_checkpoint_is_set_aside_and_the_run_goes_on(
    damaged, how, continues_from, finished_run, run_copy, cli
):
    (run_copy / "results.json").unlink()  # its test never finished: the re-run resumes, then tests
    for name in damaged:
        DAMAGE[how](run_copy / "checkpoints" / name)
    done = cli(*finished_run.overrides, f"hydra.run.dir={run_copy}")
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "Traceback" not in log
    for name in damaged:
        assert f"{name} cannot be read" in log and f"moved it to {name}.corrupt-1" in log
        assert (run_copy / "checkpoints" / f"{name}.corrupt-1").exists()
    results = json.loads((run_copy / "results.json").read_text())
    assert results["status"] == "complete"
    if continues_from == "best.ckpt":
        assert "resuming from" in log and "best.ckpt" in log.split("resuming from")[1].splitlines()[0]
    if continues_from is None:
        assert "resuming from" not in log and epoch_of(run_copy / "checkpoints" / "last.ckpt") == 0
    if "best.ckpt" in damaged and continues_from:
        assert results["best_checkpoint"] == "checkpoints/last.ckpt"
    # Once set aside it stays aside: the next command skips the finished run, no loop of the same error.
    assert "skipping" in cli(*finished_run.overrides, f"hydra.run.dir={run_copy}").stdout


def test_every_unreadable_file_is_recognised_and_a_good_one_is_not(finished_run, tmp_path):
    good = finished_run.run_dir / "checkpoints" / "last.ckpt"
    assert checkpoints.readable(good)
    for name, damage in DAMAGE.items():
        bad = Path(shutil.copy(good, tmp_path / f"{name}.ckpt"))
        damage(bad)
        assert not checkpoints.readable(bad), name
