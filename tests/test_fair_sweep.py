"""`sweep=fair` for real, as a user runs it: `python -m tlbench.train -m sweep=fair ...` in a process of its
own, training the tiny resnet on generated images. SIGTERM during the tuning round or during the compared
round stops the sweep (no further round starts), and the same command then finishes it without training
any finished job again; the joblib launcher runs both rounds. Slow: each test trains a dozen runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import small
from tlbench.analysis import tuning
from tlbench.run import sweep

PATIENCE_S = 900
FAIR = [
    "sweep=fair",
    "strategy=freeze,partial",
    "seed=0",
    "'hydra.sweeper.tune.params.strategy.lr_scale=\"0.5,2\"'",
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
    "trainer=cpu",
    "logger=none",
    "hydra.sweep.dir=sweep",
]


def command(workdir: Path, *extra: str) -> list[str]:
    from conftest import make_image_folder

    make_image_folder(workdir / "images", per_split={"train": 16, "val": 4})
    args = [*small(Path("images")), *FAIR, *extra]
    return [sys.executable, "-m", "tlbench.train", "-m", *(a.strip("'") for a in args)]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(cwd)}
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(sweep_dir: Path) -> dict[str, int]:
    """Each finished run (relative folder) with the time its results.json was written."""
    return {
        str(p.parent.relative_to(sweep_dir)): p.stat().st_mtime_ns for p in sweep_dir.rglob("results.json")
    }


@pytest.mark.slow
@pytest.mark.parametrize("during", ["tune", "compare"])
def test_sigterm_in_either_round_and_the_same_command_finishes_without_rerunning(during, tmp_path: Path):
    args = command(tmp_path, "trainer.max_epochs=6")
    sweep_dir = tmp_path / "sweep"
    process = start(args, tmp_path)
    # The tuning round's second job, or the compared round's first, has saved its first checkpoint.
    pattern = "tune/*/checkpoints/last.ckpt" if during == "tune" else "*/checkpoints/last.ckpt"
    need = 2 if during == "tune" else 1
    deadline = time.monotonic() + PATIENCE_S
    while len(list(sweep_dir.glob(pattern))) < need:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=PATIENCE_S)
    assert process.returncode == 143, stderr[-3000:]
    before = results(sweep_dir)
    if during == "tune":
        assert len(before) == 1 and all(k.startswith("tune/") for k in before)
        assert not list(sweep_dir.glob("*/.hydra"))  # no compared run started after the interrupted round
    else:
        assert len([k for k in before if k.startswith("tune/")]) == 4 and len(before) == 4
    interrupted = [p.parent for p in sweep_dir.rglob("interrupted.txt")]
    assert len(interrupted) == 1

    again = subprocess.run(
        args, cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE_S, check=False
    )
    assert again.returncode == 0, again.stderr[-3000:]
    after = results(sweep_dir)
    assert {k: after[k] for k in before} == before  # no finished job trained again
    assert len(after) == 4 + 2
    assert "resuming from" in again.stdout + again.stderr  # the interrupted job continued its checkpoint
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["counts"] == {"complete": 2, "failed": 0, "missing": 0}
    assert "## Tuning (sweep=fair)" in (sweep_dir / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(
    not sweep.is_installed("hydra_plugins.hydra_joblib_launcher"), reason="pip install 'tlbench[sweep]'"
)
def test_fair_runs_its_rounds_through_the_joblib_launcher(tmp_path: Path):
    args = command(tmp_path, "trainer.max_epochs=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=PATIENCE_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    assert len(results(sweep_dir)) == 6
    chosen = json.loads(tuning.plan_path(sweep_dir).read_text())["chosen"]
    assert set(chosen) == {"strategy=freeze", "strategy=partial"}
    names = {p.parent.name for p in sweep_dir.glob("*/results.json")}
    assert all(n.startswith("strategy=") for n in names), names
    assert (sweep_dir / "tuning.png").stat().st_size > 0
