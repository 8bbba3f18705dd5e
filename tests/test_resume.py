"""A killed run, run again, ends where the uninterrupted run ends.

The real thing: `python -m tlbench.train` (tiny resnet) in a subprocess, SIGKILLed after a chosen epoch's
last.ckpt, re-run with the same command, and compared with an uninterrupted run of that command in another
folder —
final metrics, and the weights of best.ckpt and last.ckpt. Also the streaming pipeline's augmentation
draws, which a resumed run's fresh DataLoader workers must repeat.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, data_config, make_image_folder, small
from tlbench.data.datamodule import ImageDataModule
from tlbench.models.backbones import Preset

RGB = Preset(
    mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize_size=36, crop_size=32, interpolation="bilinear"
)


# ------------------------------------------------------------------------------ streaming augmentation
def streaming_epoch(root: Path, workers: int, epochs: list[int]) -> list[torch.Tensor]:
    """The training images (augmented) of the last of `epochs`, one loader iterated through all of them."""
    config = data_config(root, batch_size=4, num_workers=workers, pipeline="streaming")
    data = ImageDataModule(config, RGB, seed=3)
    data.setup()
    epoch = [0]
    loader = data.pipeline.loader("train", True, 4, torch.device("cpu"), lambda: epoch[0])
    for epoch[0] in epochs:
        batches = [images for images, _ in loader]
    return batches


def test_a_resumed_epoch_sees_the_crops_of_the_uninterrupted_run_whatever_the_workers(tmp_path):
    """Persistent DataLoader workers carry their random state from epoch to epoch; a resumed run's
    workers start afresh. Each image's crop is drawn from (seed, epoch, image) instead."""
    root = make_image_folder(tmp_path / "images", per_split={"train": 6, "val": 2})
    uninterrupted = streaming_epoch(root, workers=2, epochs=[0, 1])
    resumed = streaming_epoch(root, workers=2, epochs=[1])
    in_process = streaming_epoch(root, workers=0, epochs=[1])
    for a, b, c in zip(uninterrupted, resumed, in_process, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(torch.cat(uninterrupted), torch.cat(streaming_epoch(root, workers=0, epochs=[0])))


# ----------------------------------------------------------------------------------- kill and resume
EPOCHS = 5
# Long enough for a machine 8x slower than a loaded 2-core laptop; a run is waited on, never timed.
PATIENCE_S = 900


def command(root: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    # Two DataLoader workers: the streaming pipeline's augmentation runs in worker processes.
    data = [o if o != "data.num_workers=0" else "data.num_workers=2" for o in small(root)]
    return [
        sys.executable, "-m", "tlbench.train", f"hydra.run.dir={run_dir}", *data,
        "trainer=cpu", "trainer.deterministic=true", f"trainer.max_epochs={EPOCHS}",
        "trainer.enable_progress_bar=false", "logger=none", "seed=0", *overrides,
    ]  # fmt: skip


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was saved in; None while it is missing or still being written."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:  # noqa: BLE001 - absent, or half-written: look again
        return None


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-3000:]


def run_until_killed(cmd: list[str], run_dir: Path, after_epoch: int) -> None:
    """SIGKILL the run as soon as last.ckpt holds epoch `after_epoch`: the next epoch is then running.

    The whole process group, as a scheduler kills a job: DataLoader workers left behind would hold the run
    folder's claim until they notice their parent is gone, and the re-run would find the folder taken."""
    last = run_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + PATIENCE_S
        while checkpoint_epoch(last) != after_epoch:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no last.ckpt of the epoch to kill after"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Had the run reached the next checkpoint before the kill, resuming would not test what it claims.
    assert checkpoint_epoch(last) == after_epoch, "killed too late: the next epoch's checkpoint was written"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(whole: Path, resumed: Path) -> None:
    a, b = (json.loads((run / "results.json").read_text()) for run in (whole, resumed))
    for key in ("test/acc", "test/loss", "val/acc", "val/loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-6), key
    assert b["trainable_stages"] == a["trainable_stages"] and b["params"] == a["params"]
    for name in ("best.ckpt", "last.ckpt"):
        expected, got = (weights(run / "checkpoints" / name) for run in (whole, resumed))
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            assert torch.allclose(value.float(), got[key].float(), atol=1e-6), (name, key)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "after_epoch"),
    [
        (["strategy=full"], 1),
        # Killed in epoch 3, after the checkpoint of epoch 2: epoch 3 trains stage4 (unfrozen at 2), and
        # epoch 3 is no multiple of unfreeze_every — the resume itself has to restore the unfreezing.
        (["strategy=gradual", "strategy.unfreeze_every=2"], 2),
        # Killed in the first fine-tuning epoch, after the last linear-probe epoch's checkpoint.
        (["strategy=lpft", "strategy.lp_epochs=2"], 1),
        (["strategy=gradual", "strategy.unfreeze_every=2", "data.pipeline=memory"], 2),
        # Part of every stage trains: the optimizer holds only the selected parameters.
        (["strategy=bitfit"], 1),
        (["strategy=norm"], 1),
        # peft's adapters (A, B) and their optimizer state come back exactly; the base stays frozen.
        (["strategy=lora"], 1),
        (["strategy=surgical", "strategy.train_stages=stage2"], 1),
        # w0 is rebuilt (not stored): the penalty after the resume must pull towards the same weights.
        (["strategy=l2sp"], 2),
    ],
    ids=[
        "full",
        "gradual-every-2",
        "lpft-across-the-switch",
        "gradual-memory",
        "bitfit",
        "norm",
        "lora",
        "surgical",
        "l2sp",
    ],  # fmt: skip
)
def test_a_killed_run_resumed_ends_as_the_uninterrupted_run(tmp_path, overrides, after_epoch):
    root = make_image_folder(tmp_path / "images", per_split={"train": 16, "val": 4, "test": 4})
    if not any(o.startswith("data.pipeline=") for o in overrides):
        overrides = [*overrides, "data.pipeline=streaming"]
    run(command(root, tmp_path / "whole", overrides))
    resumed = command(root, tmp_path / "resumed", overrides)
    run_until_killed(resumed, tmp_path / "resumed", after_epoch)
    run(resumed)
    assert_same_run(tmp_path / "whole", tmp_path / "resumed")


# ------------------------------------------------------------ moved, or its last.ckpt damaged, then resumed
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
@pytest.mark.parametrize("after_kill", ["moved", "last.ckpt truncated", "moved, last.ckpt truncated"])
def test_a_killed_run_moved_or_damaged_resumed_ends_as_the_uninterrupted_run(tmp_path, after_kill):
    """A moved folder resumes with its best score and its own checkpoints (Lightning alone forgot the best
    score after a move, so the first epoch after the resume replaced best.ckpt whatever its score). A
    damaged last.ckpt is set aside and the run continues from best.ckpt — replaying the same epochs, as
    each epoch's randomness comes from (seed, epoch)."""
    root = make_image_folder(tmp_path / "images", per_split={"train": 16, "val": 4, "test": 4})
    overrides = ["strategy=gradual", "strategy.unfreeze_every=2", "data.pipeline=streaming"]
    run(command(root, tmp_path / "whole", overrides))
    killed = tmp_path / "killed"
    run_until_killed(command(root, killed, overrides), killed, after_epoch=2)
    resumed = killed
    if after_kill.startswith("moved"):
        resumed = Path(shutil.move(killed, tmp_path / "disk2" / "resumed"))
    if after_kill.endswith("truncated"):
        truncate(resumed / "checkpoints" / "last.ckpt")
    run(command(root, resumed, overrides))
    assert_same_run(tmp_path / "whole", resumed)
    assert (resumed / "checkpoints" / "last.ckpt.corrupt-1").exists() == after_kill.endswith("truncated")
