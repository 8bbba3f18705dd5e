"""A run folder's life beyond one training: its claim, run_config.json, force=true's moving aside, whether
it can be written, and what a signal leaves behind. No torch or Lightning at import: the report uses it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

from tlbench.results.files import (
    CLAIM_FILE,
    ERROR_FILE,
    INTERRUPTED_FILE,
    RESULTS_FILE,
    claim_holder,
    write_atomic,
    write_json_atomic,
)

RUN_CONFIG_FILE = "run_config.json"
REPLACED_DIR = "replaced"
CHECKPOINT_DIR = "checkpoints"
# Left in place by force=true: Hydra's files (its log is open), this process's claim, earlier runs.
KEPT_ON_REPLACE = (".hydra", CLAIM_FILE, REPLACED_DIR)
# Keys of train.yaml's override_dirname.exclude_keys: how a run is executed, not what it computes. Used
# when Hydra's own list is not at hand (tlbench.run.train.run from a notebook).
EXECUTION_ONLY_KEYS = (
    "force", "sweep", "data.num_workers", "data.cache_dir", "data.memory_max_gb", "data.pipeline",
    "optim.cuda_graph", "trainer.enable_progress_bar",
)  # fmt: skip
# What a run's `auto` settings resolved to where it started (run_config.json): they change what it computes,
# so a resume resolving them otherwise would continue a different run. Each with the setting that pins it.
RESOLVED_KEY = "resolved"
RESOLVED_SETTINGS = {
    "pipeline": "data.pipeline",
    "precision": "trainer.precision",
    "cuda_graph": "optim.cuda_graph",
}


class RunFolderError(ValueError):
    """A run folder that cannot take this run; the message names the folder and the way out."""


class RunClaimed(RunFolderError):
    """Another live process is running this run folder."""


class RunInterrupted(BaseException):
    """A signal stops the run; a BaseException, so a sweep's `except Exception` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def exit_status(signum: int) -> int:
    """128 + the signal number, what shells, `timeout` and SLURM scripts expect (143 for SIGTERM)."""
    return 128 + signum


# Lock handles this process holds. A forked child (a DataLoader worker) inherits them, and an flock lasts
# until every copy is closed: a run killed with SIGKILL would stay claimed until its workers exited.
_HELD_LOCKS: set[IO] = set()
_fork_hook_registered = False


def _close_inherited_locks() -> None:
    for handle in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            handle.close()  # the child's copy only: the parent's lock stays
    _HELD_LOCKS.clear()


def try_lock(path: Path, mode: str = "a") -> IO | None:
    """A handle holding an exclusive flock on `path` (not kept by forked children), or None if taken."""
    import fcntl  # POSIX only

    handle = path.open(mode)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    global _fork_hook_registered
    if not _fork_hook_registered:  # once, at the first lock (registering at import would be a side effect)
        os.register_at_fork(after_in_child=_close_inherited_locks)
        _fork_hook_registered = True
    _HELD_LOCKS.add(handle)
    return handle


def claim_run(run_dir: str | Path) -> IO | None:
    """An flock on <run_dir>/claim.lock (None when another process holds it): the OS drops it however the
    process ends, so a crashed holder leaves no stale claim (on a local disk; NFS depends on the server)."""
    path = Path(run_dir) / CLAIM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = try_lock(path, "a+")
    if handle is None:
        return None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
    handle.flush()
    return handle


@contextmanager
def claimed(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder's claim for the body; RunClaimed (naming the holder) when another has it."""
    handle = claim_run(run_dir)
    if handle is None:
        holder = claim_holder(run_dir) or "another process"
        raise RunClaimed(
            f"{run_dir} is being run by {holder}; wait for it to finish (a finished run is then skipped), "
            "or run in another folder (hydra.run.dir=... / hydra.sweep.dir=...)"
        )
    try:
        yield
    finally:
        _HELD_LOCKS.discard(handle)
        handle.close()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: one entry per setting, named as on the command line."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def result_settings(config: Mapping[str, Any], ignored: Iterable[str]) -> dict[str, Any]:
    """The settings that change what a run computes: every key but the execution-only ones."""
    ignored = tuple(ignored)
    normal = json.loads(json.dumps(config, default=str))  # tuples, paths: as the saved JSON has them
    return {
        k: v for k, v in flatten(normal).items() if not any(k == i or k.startswith(f"{i}.") for i in ignored)
    }


def setting_changes(old: Mapping[str, Any], new: Mapping[str, Any], ignored: Iterable[str]) -> list[str]:
    """Each setting both configs have that differs, as `key: old → new`. A key only one side has came with
    a tlbench upgrade, not from the user: counting it would refuse every run folder of an older version."""
    before, after = result_settings(old, ignored), result_settings(new, ignored)
    return [
        f"{key}: {before[key]} → {after[key]}"
        for key in sorted(before.keys() & after.keys())
        if before[key] != after[key]
    ]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def saved_config(run_dir: str | Path) -> dict | None:
    """What the run in this folder was started with: run_config.json, else (older tlbench) results.json's."""
    for name, key in ((RUN_CONFIG_FILE, None), (RESULTS_FILE, "config")):
        loaded = read_json(Path(run_dir) / name)
        config = loaded.get(key) if key and isinstance(loaded, dict) else loaded
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k != RESOLVED_KEY}
            if config:
                return config
    return None


def save_config(run_dir: str | Path, config: Mapping[str, Any]) -> Path:
    """run_config.json (keeping what `auto` resolved to): a later command compares its settings with it."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    old = read_json(path)
    kept = {RESOLVED_KEY: old[RESOLVED_KEY]} if isinstance(old, dict) and RESOLVED_KEY in old else {}
    return write_json_atomic(path, {**kept, **config})


def keep_resolved(run_dir: str | Path, resolved: Mapping[str, Any], resuming: bool) -> None:
    """Store what `auto` resolved to; RunFolderError when resuming a run that resolved it otherwise."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    saved = read_json(path)
    saved = saved if isinstance(saved, dict) else {}
    before = saved.get(RESOLVED_KEY) or {}
    changed = [k for k in RESOLVED_SETTINGS if k in before and before[k] != resolved.get(k)]
    if resuming and changed:
        differences = "; ".join(
            f"{RESOLVED_SETTINGS[k]} resolved to {before[k]}, now {resolved.get(k)}" for k in changed
        )
        pins = " ".join(f"{RESOLVED_SETTINGS[k]}={str(before[k]).lower()}" for k in changed)
        raise RunFolderError(
            f"{run_dir} holds a run started where its settings resolved otherwise ({differences}): "
            f"resuming would continue a different run. Set them as they were ({pins}) to continue it, add "
            f"force=true to move it aside (into {REPLACED_DIR}/) and start afresh, or choose another folder "
            "(hydra.run.dir=... / hydra.sweep.dir=...)"
        )
    save_config(
        run_dir, {k: v for k, v in saved.items() if k != RESOLVED_KEY} | {RESOLVED_KEY: dict(resolved)}
    )


def has_run_outputs(run_dir: str | Path) -> bool:
    """Whether the folder holds what a run would continue from or report: a checkpoint or results."""
    run_dir = Path(run_dir)
    return (run_dir / RESULTS_FILE).exists() or any((run_dir / CHECKPOINT_DIR).glob("*.ckpt"))


def refuse_changed_settings(run_dir: str | Path, old: Mapping, new: Mapping, ignored: Iterable[str]) -> None:
    """RunFolderError naming each changed setting: resuming would train the old run and report the new."""
    changes = setting_changes(old, new, ignored)
    if changes:
        raise RunFolderError(
            f"{run_dir} holds a run with other settings ({'; '.join(changes)}). Add force=true to move "
            f"that run aside (into {REPLACED_DIR}/) and start this one, or choose another folder "
            "(hydra.run.dir=... / hydra.sweep.dir=...)"
        )


def move_aside(run_dir: str | Path) -> Path | None:
    """force=true: move an earlier run's outputs into <run_dir>/replaced/<time>/ (returned), never delete."""
    run_dir = Path(run_dir)
    old = [p for p in run_dir.iterdir() if p.name not in KEPT_ON_REPLACE and p.suffix != ".log"]
    if not old:
        return None
    target = run_dir / REPLACED_DIR / time.strftime("%Y-%m-%d_%H-%M-%S")
    suffix = 1
    while target.exists():
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
        suffix += 1
    target.mkdir(parents=True)
    for path in old:
        shutil.move(str(path), target / path.name)
    return target


def check_writable(folder: str | Path, key: str = "hydra.run.dir") -> None:
    """RunFolderError unless a file can be written there (permissions alone do not tell: root, ACLs)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(
            f"{existing} is a file where tlbench needs the folder {folder}: move or rename it, or choose "
            f"another {key}"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise RunFolderError(
            f"cannot write into {existing} ({error.strerror}), where tlbench writes {folder}: make it "
            f"writable (chmod u+w {existing}) or choose another {key}"
        ) from None


class SignalGuard:
    """For the life of one run: SIGTERM and SIGINT stop it with RunInterrupted, so main() can record it.

    During fit or test Lightning's SIGTERM handler is in front and stops at the next batch boundary, where
    weights and optimizer agree: the guard only notes the signal (and hands Ctrl-C on as a SIGTERM). A
    second Ctrl-C stops at once."""

    HANDLED = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for signum in self.HANDLED:
                self._previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        again = self.received is not None
        self.received = self.received or signum
        in_front = signal.getsignal(signal.SIGTERM)
        if in_front == self.handle or (again and signum == signal.SIGINT):
            raise RunInterrupted(self.received)
        if signum == signal.SIGINT and callable(in_front):
            in_front(signal.SIGTERM, frame)  # Lightning's handler, which calls this one back: a no-op


def checkpoint_position(path: str | Path) -> tuple[int, int] | None:
    """(epoch, global step) a checkpoint was saved at, or None when it cannot be read."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - truncated, garbage (UnpicklingError), empty: all unreadable alike
        return None
    if not isinstance(saved, dict):
        return None
    return int(saved.get("epoch", 0)), int(saved.get("global_step", 0))


def record_interrupted(run_dir: str | Path, signum: int) -> Path:
    """interrupted.txt: one line saying which signal stopped the run and where a re-run continues from."""
    run_dir = Path(run_dir)
    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    position = checkpoint_position(last) if last.exists() else None
    name = signal.Signals(signum).name
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    where = "no checkpoint yet: run the same command again to start it"
    if position:
        where = f"{last.relative_to(run_dir)} holds epoch {position[0]}, step {position[1]}: "
        where += "run the same command again to continue"
    return write_atomic(run_dir / INTERRUPTED_FILE, f"interrupted by {name} at {when}; {where}\n")


def is_first_process() -> bool:
    """False on a DDP run's extra ranks, which re-run this entry point: only the first claims the folder."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") == "0" for name in ranks)


def discard_unprepared(run_dir: Path, job_name: str) -> bool:
    """A single run refused before its folder was prepared (no run_config.json) leaves nothing worth keeping
    in the folder Hydra made for it: remove it when it holds only `.hydra/`, the job log, the claim and
    error.txt, so a mistyped command leaves no empty run behind. True if it was removed."""
    leftovers = {".hydra", f"{job_name}.log", CLAIM_FILE, ERROR_FILE}
    if not is_first_process() or any(path.name not in leftovers for path in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
