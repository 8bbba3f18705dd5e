"""A sweep stopped by a signal, whatever launches its jobs. SIGTERM or SIGINT to the process that
launched the sweep reaches every job: one in this process (basic launcher) stops through its run's
SignalGuard; one in a process of its own (joblib's workers, submitit's) gets SIGTERM; one not started yet
starts nothing. The launcher then returns, and ReportOnMultirunEnd writes the report and exits 128 + the
signal.

`stop_requested(sweep_dir)` is what a sweeper that launches rounds asks before the next one."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tlbench.results.files import CLAIM_FILE, claim_holder, write_atomic
from tlbench.run.folder import exit_status

log = logging.getLogger("tlbench")

# In the sweep folder while a signal stops the sweep: a job that starts after it (a joblib worker taking the
# next job, a submitit process still starting) starts nothing. Removed when the sweep is started again.
STOP_FILE = ".tlbench-stopped"
# Set in the jobs' environment by the process that launches them (StopSweepOnSignal).
SWEEP_PID_VARIABLE = "TLBENCH_SWEEP_PID"
# The signal that stopped the sweep this process launches (None while it runs on).
_stopped_by: int | None = None


def stop_requested(sweep_dir: str | Path | None = None) -> int | None:
    """The signal that stopped this sweep (launch nothing more), or None. In the launching process it is
    the signal it received; in a job's process (or any other) it is read from the sweep folder's STOP_FILE.
    A sweeper that launches rounds calls it between rounds."""
    if _stopped_by is not None:
        return _stopped_by
    if sweep_dir is None:
        return None
    try:
        return signal.Signals[(Path(sweep_dir) / STOP_FILE).read_text().split()[0]].value
    except (OSError, IndexError, KeyError):
        return None


def is_sweep_process() -> bool:
    """Whether this process launched the sweep (the basic launcher runs its jobs in it) — not a worker."""
    return os.environ.get(SWEEP_PID_VARIABLE, str(os.getpid())) == str(os.getpid())


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process `pid` was started (at any depth) by `ancestor`: a launcher's workers are, another
    sweep's jobs in the same folder are not. Linux reads /proc; elsewhere, the same process group."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            return os.getpgid(pid) == os.getpgid(ancestor)
        except OSError:
            return False
    while pid > 1:
        try:  # the field after the parenthesised name (which may hold spaces) is the state, then the ppid
            pid = int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def running_jobs(sweep_dir: Path, everywhere: bool = False) -> list[int]:
    """Processes of this sweep (started by this process) that hold a run folder's claim under sweep_dir;
    `everywhere`: those on other machines too, negated (SLURM's, which cannot be signalled from here)."""
    host, me, pids = socket.gethostname(), os.getpid(), []
    for lock in sweep_dir.rglob(CLAIM_FILE):
        words = (claim_holder(lock.parent) or "").split()
        # "pid 123 on host since ...": only ours can be signalled (SLURM jobs run on other hosts).
        if len(words) >= 4 and words[0] == "pid" and words[1].isdigit():
            pid = int(words[1])
            if words[3] != host:
                pids += [-pid] if everywhere else []
            elif pid != me and descends_from(pid, me):
                pids.append(pid)
    return pids


def stop_running_jobs(sweep_dir: Path, signalled: set[int]) -> None:
    """SIGTERM each job of this sweep that runs in a process of its own: Lightning stops it at the next
    batch, CheckpointOnInterrupt saves its last.ckpt and the job writes interrupted.txt."""
    for pid in running_jobs(sweep_dir):
        if pid not in signalled:
            signalled.add(pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:  # it ended in between
                pass


class StopSweepOnSignal(Callback):
    """Hydra callback: SIGTERM or SIGINT to the process that launched a sweep stops the whole sweep.

    The jobs may run in other processes (joblib's workers, submitit's): each running one gets SIGTERM (and
    saves its last.ckpt), a job not yet started starts nothing (STOP_FILE), and the launcher, which waits
    for every job to return, returns; on_multirun_end then writes the report and exits 128 + the signal.
    Without this, the launching process dies at once and its workers train on as orphans."""

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None
        self._signalled: set[int] = set()
        self._previous: dict[int, Any] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _stopped_by
        _stopped_by = None
        self._sweep_dir = Path(config.hydra.sweep.dir)
        (self._sweep_dir / STOP_FILE).unlink(missing_ok=True)  # a new start of the sweep continues it
        os.environ[SWEEP_PID_VARIABLE] = str(os.getpid())  # before the launcher starts any worker
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self.stop)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def stop(self, signum: int, frame: Any) -> None:
        global _stopped_by
        first = _stopped_by is None
        _stopped_by = _stopped_by or signum
        if self._sweep_dir is None:
            return
        if not first:  # asked twice: the user will not wait (jobs on other machines can take hours)
            log.error("%s again: exiting without waiting for the jobs", signal.Signals(signum).name)
            raise SystemExit(exit_status(_stopped_by))
        write_atomic(self._sweep_dir / STOP_FILE, f"{signal.Signals(_stopped_by).name}\n")  # before the scan
        log.warning(
            "%s: stopping the sweep: running jobs save their last.ckpt and stop, no further job starts",
            signal.Signals(signum).name,
        )
        stop_running_jobs(self._sweep_dir, self._signalled)
        if any(pid < 0 for pid in running_jobs(self._sweep_dir, everywhere=True)):
            log.warning(
                "some jobs run on other machines (SLURM): stop them with scancel (they save their last.ckpt "
                "at its SIGTERM); this process waits for every job — signal it again to exit at once"
            )
        # A job that took its claim while we looked (its claim file still empty) is caught a moment later.
        rescan = threading.Timer(1.0, stop_running_jobs, (self._sweep_dir, self._signalled))
        rescan.daemon = True
        rescan.start()
