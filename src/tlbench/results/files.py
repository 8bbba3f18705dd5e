"""What a run leaves behind: `results.json` (written last, atomically: its presence means the run
finished); its cost measurements are run/cost.py's."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

from tlbench.run.folder import RESULTS_FILE

VERSIONED = ("tlbench", "torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write to a temporary file and rename: a reader never sees half a file, a crash never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def read_results(run_dir: str | Path) -> dict | None:
    """The run's results if it finished, else None (missing, unreadable or incomplete file)."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("status") == "complete" else None
