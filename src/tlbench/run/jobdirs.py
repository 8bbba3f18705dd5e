"""Where each job of a tlbench sweep runs: a folder named by what varies across the round
(`strategy=freeze,seed=1`), never by the constant settings (they are in the sweep folder's multirun.yaml,
and every job's full overrides in its .hydra/overrides.yaml). A job whose full override set already has a
folder (finished, interrupted or failed; named by an older tlbench or another round) runs there again, so
re-running or extending a sweep skips what is done. Each round's folders are listed in planned_jobs.json,
for the report's "not started" list when a signal stops the sweep."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import yaml

from tlbench.results.files import write_atomic

PLAN_FILE = "planned_jobs.json"
MAX_NAME = 200  # bytes; file systems stop at 255
# Kept as they are in a folder name; anything else (/, quotes, $, braces, spaces) becomes `_`: the name must
# be one path component and survive Hydra's quoted-string grammar (no interpolation).
UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+\-\[\]:@%]")


def split(override: str) -> tuple[str, str]:
    """`key=value` → (key, value); `+key=value` keeps its `+` (an addition is another setting)."""
    key, _, value = override.partition("=")
    return key.strip(), value.strip()


def bare_key(key: str) -> str:
    return key.lstrip("+~")


def identity(overrides: Iterable[str], excluded: Collection[str]) -> frozenset[str]:
    """What a job computes: its overrides, order aside, without the keys that cannot change a result."""
    return frozenset(
        f"{k}={v}"
        for k, v in map(split, overrides)
        if bare_key(k) not in excluded and not k.startswith("hydra")
    )


def saved_overrides(folder: Path) -> list[str] | None:
    """The task overrides Hydra saved for the job that ran in this folder, or None."""
    try:
        loaded = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in loaded] if isinstance(loaded, list) else None


def existing_jobs(parent: Path, excluded: Collection[str]) -> dict[frozenset[str], Path]:
    """Job folders directly in `parent`, by what they compute (the first in name order wins a tie)."""
    found: dict[frozenset[str], Path] = {}
    for folder in sorted(p.parent.parent for p in parent.glob("*/.hydra/overrides.yaml")):
        overrides = saved_overrides(folder)
        if overrides is not None:
            found.setdefault(identity(overrides, excluded), folder)
    return found


def varying_keys(jobs: Sequence[Sequence[str]], excluded: Collection[str]) -> list[str]:
    """Keys whose value differs between the jobs (absent counts as a value), in first-seen order."""
    keys = list(dict.fromkeys(split(o)[0] for job in jobs for o in job))
    settings = [dict(map(split, job)) for job in jobs]
    return [k for k in keys if len({s.get(k) for s in settings}) > 1 and bare_key(k) not in excluded]


# Where nothing varies (a sweep of one job, `-m seed=0`), the keys that still say which run it is, so
# extending that sweep later (`seed=0,1,2`) gives folders named alike (seed=0, seed=1, seed=2).
NAMED_ALONE = ("strategy", "backbone", "data.per_class", "seed")


def named_alone(jobs: Sequence[Sequence[str]]) -> list[str]:
    given = {split(o)[0] for job in jobs for o in job}
    return [key for key in NAMED_ALONE if key in given]


def safe(name: str) -> str:
    """One readable path component of at most MAX_NAME bytes; a long one keeps its start and a hash."""
    name = UNSAFE.sub("_", name).strip(".") or "run"
    if len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return name.encode()[: MAX_NAME - 9].decode(errors="ignore") + "-" + digest


def short_name(job: Sequence[str], keys: Sequence[str]) -> str:
    pairs = dict(split(o) for o in job)
    return ",".join(f"{k}={pairs[k]}" for k in keys if k in pairs)


def distinct_name(job: Sequence[str], keys: list[str], taken: dict[str, frozenset[str] | None]) -> str:
    """The short name, made longer by the keys where it differs from the folder already holding that name
    (`strategy=freeze` → `strategy=freeze,seed=1`), and by a hash of every override if that is not enough."""
    keys = list(keys)
    while (name := safe(short_name(job, keys))) in taken:
        other = taken[name]
        differ = [k for k, v in map(split, job) if other and k not in keys and f"{k}={v}" not in other]
        if not differ:
            break
        keys.append(differ[0])
    else:
        return name
    digest = hashlib.sha1("\n".join(sorted(job)).encode()).hexdigest()[:8]
    return safe(f"{short_name(job, keys)},cfg={digest}")


def assign(
    parent: Path, jobs: Sequence[Sequence[str]], excluded: Collection[str], keys: Sequence[str] | None = None
) -> list[Path]:
    """A folder in `parent` for each job: the one that already ran its override set, else a new name from
    `keys` (default: what varies between the jobs) that no other setting holds (two settings never share a
    folder)."""
    existing = existing_jobs(parent, excluded)
    taken: dict[str, frozenset[str] | None] = {p.name: None for p in parent.glob("*") if p.is_dir()}
    taken |= {folder.name: ident for ident, folder in existing.items()}
    keys = list(keys) if keys is not None else varying_keys(jobs, excluded) or named_alone(jobs)
    folders = []
    for job in jobs:
        ident = identity(job, excluded)
        folder = existing.get(ident)
        if folder is None:
            kept = [f"{k}={v}" for k, v in map(split, job) if bare_key(k) not in excluded]
            folder = parent / distinct_name(kept, keys, taken)
            existing[ident] = folder
            taken[folder.name] = ident
        folders.append(folder)
    return folders


def subdir_override(sweep_dir: Path, folder: Path) -> str:
    """The Hydra override that runs a job in `folder` (quoted: names hold `=` and `,`)."""
    return f"hydra.sweep.subdir='{folder.relative_to(sweep_dir).as_posix()}'"


def write_plan(
    sweep_dir: Path, round_name: str, folders: Sequence[Path], jobs: Sequence[Sequence[str]]
) -> None:
    """planned_jobs.json: the folders of the round being launched (what a stopped sweep has not started)."""
    entries = [
        {"dir": f.relative_to(sweep_dir).as_posix(), "overrides": list(job)}
        for f, job in zip(folders, jobs, strict=True)
    ]
    write_atomic(sweep_dir / PLAN_FILE, json.dumps({"round": round_name, "jobs": entries}, indent=1) + "\n")


def read_plan(sweep_dir: Path) -> list[Path] | None:
    """The job folders of the last round launched into sweep_dir, or None without a plan."""
    try:
        plan = json.loads((sweep_dir / PLAN_FILE).read_text())
        return [sweep_dir / entry["dir"] for entry in plan["jobs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
