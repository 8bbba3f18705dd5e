"""Which run folders lie below a folder and how each ended: running (a live claim), complete, interrupted
(interrupted.txt), failed (error.txt) or missing (only Hydra's .hydra/: killed or timed out). None dropped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlbench.results.files import (
    ERROR_FILE,
    INTERRUPTED_FILE,
    RESULTS_FILE,
    claim_holder,
    read_results_or_reason,
)

ALL = "all"  # the data size of a run on every training image (data.per_class unset)
# A folder holding this file holds sweep=fair's tuning runs (analysis/tuning.py): their results stay out of
# the report of any folder above it (the verdict is the compared runs' alone); their failures are listed.
TUNING_PLAN = "tuning.json"


@dataclass
class Run:
    """A finished run: its folder and its results.json."""

    path: Path
    results: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        return self.results.get("params", {})

    @property
    def num_classes(self) -> int | None:
        classes = self.results.get("classes") or self.results.get("per_class_acc")
        return len(classes) if classes else None

    @property
    def context(self) -> tuple[str, str, int | str]:
        """What strategies are compared within: data × backbone × data size (images per class, or ALL)."""
        per_class = self.params.get("per_class")
        size = ALL if per_class is None else int(per_class)
        return str(self.params.get("data", "?")), str(self.params.get("backbone", "?")), size

    @property
    def strategy(self) -> str:
        return str(self.params.get("strategy", "?"))

    @property
    def replicate(self) -> Any:
        """Its seed, or (seed, fold) under k-fold: what a setting averages and strategies pair over."""
        seed, fold = self.params.get("seed"), self.params.get("fold")
        return seed if fold is None else (seed, fold)

    def get(self, key: str) -> float | None:
        """A metric or a cost of this run as a number (None when absent); AUROC for two classes only."""
        if key == "test/auroc" and (self.num_classes or 2) > 2:
            return None
        value = self.results.get("metrics", {}).get(key, self.results.get(key))
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class Problem:
    path: Path
    status: str  # "running" | "interrupted" | "failed" | "missing"
    detail: str


@dataclass
class Found:
    root: Path
    runs: list[Run] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    missing: list[Problem] = field(default_factory=list)
    interrupted: list[Problem] = field(default_factory=list)
    running: list[Problem] = field(default_factory=list)

    @property
    def has_outcomes(self) -> bool:
        """Whether any run got far enough to say how it went (missing folders say nothing)."""
        return bool(self.runs or self.failed or self.interrupted or self.running)

    @property
    def unfinished(self) -> list[Problem]:
        """Every run folder without complete results, in the order the report lists them."""
        return [*self.running, *self.interrupted, *self.failed, *self.missing]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(empty file)"


def find_runs(root: str | Path) -> Found:
    """Every run folder below root (root included): finished, running, interrupted, failed and missing."""
    root = Path(root)
    found = Found(root)
    folders = {p.parent for name in (RESULTS_FILE, ERROR_FILE, INTERRUPTED_FILE) for p in root.rglob(name)}
    folders |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    tuning = [p.parent for p in root.rglob(TUNING_PLAN) if p.parent != root]
    for folder in sorted(folders):
        results, why = read_results_or_reason(folder)
        holder = claim_holder(folder)
        if holder is not None:  # first: a forced re-run in progress is running, whatever the folder holds
            found.running.append(Problem(folder, "running", f"running: {holder}"))
        elif results is not None:
            if not any(t in folder.parents for t in tuning):  # a tuning run counts only where it went wrong
                found.runs.append(Run(folder, results))
        elif (folder / INTERRUPTED_FILE).exists():
            text = (folder / INTERRUPTED_FILE).read_text(errors="replace")
            found.interrupted.append(Problem(folder, "interrupted", last_line(text)))
        elif (folder / ERROR_FILE).exists():
            text = (folder / ERROR_FILE).read_text(errors="replace")
            found.failed.append(Problem(folder, "failed", last_line(text)))
        else:
            killed = not (folder / RESULTS_FILE).exists()
            detail = f"{why} and no {ERROR_FILE} (killed or timed out)" if killed else why
            found.missing.append(Problem(folder, "missing", detail))
    return found


def counts(found: Found) -> dict[str, int]:
    """Run folders by state; running and interrupted only when there are some (most reports have none)."""
    extra = {"interrupted": len(found.interrupted), "running": len(found.running)}
    done = {"complete": len(found.runs), "failed": len(found.failed), "missing": len(found.missing)}
    return done | {k: v for k, v in extra.items() if v}


def count_line(found: Found) -> str:
    """`3 complete, 0 failed, 2 missing, 1 interrupted`: the sweep's state in one line."""
    return ", ".join(f"{n} {state}" for state, n in counts(found).items())
