"""A run's checkpoint files: written atomically, found wherever the run folder now is, and set aside when
they cannot be read — so a full disk, a copied or moved folder or a damaged file never costs a finished epoch
and never turns every re-run into the same traceback.

- AtomicCheckpointIO: Lightning's TorchCheckpointIO writes into the target file itself (a failed save leaves
  it truncated); this one writes beside it, fsyncs and renames (results.files.write_atomic), and a failed
  save is one line naming the file, the free space and what to do.
- RunCheckpoint: Lightning's ModelCheckpoint stores absolute paths (best_model_path, best_k_models, ...) and,
  when its folder has moved, reloads only best_model_path — the old folder's file. This one re-bases them
  onto the folder it saves to now, so a copied or moved run resumes and tests its own checkpoints.
- resume_checkpoint / checkpoint_to_test: which file to continue or test from; an unreadable one is renamed
  `<name>.corrupt-<n>` (named in one log line) and the next best state is used.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from tlbench.results.files import write_atomic

log = logging.getLogger("tlbench")

LAST, BEST = "last.ckpt", "best.ckpt"
# ModelCheckpoint's state that holds paths inside its folder.
PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be saved; the message names the file, the free space and the way out."""


def free_space(path: Path) -> str:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:,.0f} MB free there"


def write_failure(path: Path, error: OSError) -> str:
    reason = error.strerror or str(error)
    advice = (
        "free some space there or put the run on another disk (hydra.run.dir=... / hydra.sweep.dir=...)"
        if error.errno in (errno.ENOSPC, errno.EDQUOT)
        else "make that folder writable or put the run elsewhere (hydra.run.dir=... / hydra.sweep.dir=...)"
    )
    return (
        f"cannot save the checkpoint {path} ({reason}; {free_space(path)}); the previous {path.name}, if "
        f"any, is intact: {advice}, then run the same command again to continue from the last checkpoint"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving through a temporary file beside the target (fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)  # Lightning's own TypeError
        path = Path(path)
        try:
            write_atomic(path, lambda handle: torch.save(checkpoint, handle))
        except OSError as error:
            raise CheckpointWriteError(write_failure(path, error)) from None
        except RuntimeError as error:  # torch's zip writer reports a failed write as a RuntimeError
            if not isinstance(error.__context__, OSError):
                raise
            raise CheckpointWriteError(write_failure(path, error.__context__)) from None


def rebase(path: Any, old: str, new: str) -> Any:
    """A path inside `old` as the same path inside `new`; anything else unchanged."""
    if not isinstance(path, str) or not path:
        return path
    try:
        return str(Path(new) / Path(path).relative_to(old))
    except ValueError:
        return path


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose saved paths follow the run folder: loaded from a checkpoint written where the
    folder was before (copied, moved, another machine), its state is re-based onto where it is now, so
    best_model_score, best_k_models and best_model_path all survive and name files in this folder."""

    def _generate_state_key(self, **kwargs: Any) -> str:
        # Lightning keys a callback's saved state by class name: keep ModelCheckpoint's, so checkpoints
        # written before this class existed still restore into it (and the other way round).
        return f"{ModelCheckpoint.__qualname__}{kwargs!r}"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            new = self.dirpath
            paths = {key: rebase(state_dict[key], old, new) for key in PATH_KEYS if key in state_dict}
            best_k = {rebase(k, old, new): v for k, v in (state_dict.get("best_k_models") or {}).items()}
            state_dict = {**state_dict, **paths, "best_k_models": best_k, "dirpath": new}
        super().load_state_dict(state_dict)


def inside(path: str | Path, run_dir: str | Path) -> str:
    """`path` relative to the run folder, whether either is relative, absolute or through a symlink."""
    return os.path.relpath(os.path.realpath(path), os.path.realpath(run_dir))


def readable(path: Path) -> bool:
    """Whether `path` loads as a Lightning checkpoint (zero-byte, truncated and garbage files do not)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - whatever torch raises for a damaged file, it cannot be resumed from
        return False
    return isinstance(saved, dict) and "state_dict" in saved


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to `<name>.corrupt-<n>` (kept for inspection, never deleted)."""
    n = 1
    while (target := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    os.replace(path, target)
    return target


def usable(path: Path, instead: str) -> bool:
    """Whether `path` exists and can be read; an unreadable one is set aside with one warning."""
    if not path.exists():
        return False
    if readable(path):
        return True
    try:
        moved = set_aside(path)
    except FileNotFoundError:  # another DDP rank set it aside first
        return False
    log.warning("%s cannot be read (damaged or incomplete): moved it to %s; %s", path, moved.name, instead)
    return False


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run continues from: last.ckpt, else (missing or unreadable) best.ckpt, else None
    (start over)."""
    folder = Path(run_dir) / "checkpoints"
    if usable(folder / LAST, "continuing from best.ckpt if it can be read, else from the start"):
        return folder / LAST
    if usable(folder / BEST, "starting the run over"):
        return folder / BEST
    return None


def checkpoint_to_test(best: str | None, run_dir: Path) -> str | None:
    """The checkpoint to test: the best one, else (unreadable) last.ckpt, else None (weights in memory)."""
    if not best or usable(Path(best), "testing last.ckpt instead"):
        return best or None
    last = Path(run_dir) / "checkpoints" / LAST
    return str(last) if usable(last, "testing the weights in memory instead") else None
