"""A run folder's files, written atomically and read; `results.json` (written last) "complete": finished."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

RESULTS_FILE = "results.json"
CLAIM_FILE = "claim.lock"  # held (flock) by the process running the folder
ERROR_FILE = "error.txt"
INTERRUPTED_FILE = "interrupted.txt"
VERSIONED = ("tlbench", "torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_atomic(path: str | Path, content: str | bytes | Callable[[IO[bytes]], object]) -> Path:
    """Write `content` (text, bytes, or a function writing into a binary file) to a temporary file beside
    `path`, flush it to disk and rename it over `path`: a reader never sees half a file, and a failed write
    keeps the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())  # else a power cut after the rename can leave an empty file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_results_or_reason(run_dir: str | Path) -> tuple[dict | None, str]:
    """The run's results if it finished, else None and why not (no file, unreadable, not complete)."""
    try:
        results = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    except FileNotFoundError:
        return None, f"no {RESULTS_FILE}"
    except (OSError, ValueError) as error:
        return None, f"{RESULTS_FILE} is unreadable ({error})"
    if not isinstance(results, dict) or results.get("status") != "complete":
        status = results.get("status") if isinstance(results, dict) else type(results).__name__
        return None, f"{RESULTS_FILE} has status {status!r}, not 'complete'"
    return results, ""


def read_results(run_dir: str | Path) -> dict | None:
    """The run's results if it finished, else None."""
    return read_results_or_reason(run_dir)[0]


def claim_holder(run_dir: str | Path) -> str | None:
    """Who is running this folder now ("pid 123 on host since ..."), or None when nobody is."""
    import fcntl  # POSIX only

    path = Path(run_dir) / CLAIM_FILE
    try:
        handle = path.open("r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
