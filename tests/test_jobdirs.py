"""Sweep job folders (run/jobdirs.py): named by what varies, found again by their full override set, never
shared by two settings; the round's plan for the report's "not started" list. Whole sweeps: test_sweep.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from tlbench.run import jobdirs

EXCLUDED = ["force", "sweep", "data.num_workers"]
CONSTANT = [
    "data=imagefolder",
    "data.root=/home/me/data/x-rays",
    "backbone.weights=null",
    "data.image_size=32",
]


def job(*varying: str) -> list[str]:
    return [*CONSTANT, *varying, "sweep=adhoc"]


def ran(folder: Path, overrides: list[str]) -> Path:
    """A job folder as Hydra leaves it: .hydra/overrides.yaml with the job's task overrides."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return folder


def test_folders_name_only_what_varies_and_never_a_path(tmp_path: Path):
    jobs = [job(f"strategy={s}", f"seed={n}") for s in ("freeze", "full") for n in (0, 1)]
    names = [f.name for f in jobdirs.assign(tmp_path, jobs, EXCLUDED)]
    assert names == [
        "strategy=freeze,seed=0",
        "strategy=freeze,seed=1",
        "strategy=full,seed=0",
        "strategy=full,seed=1",
    ]


def test_an_extended_sweep_finds_every_finished_folder_by_its_overrides(tmp_path: Path):
    # An older tlbench named folders by every override; a first run named them by strategy alone.
    old = ran(
        tmp_path / "backbone.weights=null,data.root=_home_me_data,seed=0,strategy=freeze",
        job("strategy=freeze", "seed=0"),
    )
    first = ran(tmp_path / "strategy=full", job("strategy=full", "seed=0"))

    # The same sweep with another seed, arguments in another order, a setting that changes nothing added.
    jobs = [
        [*job(f"seed={n}", f"strategy={s}"), "data.num_workers=4"] for s in ("freeze", "full") for n in (0, 1)
    ]
    folders = jobdirs.assign(tmp_path, jobs, EXCLUDED)

    assert folders[0] == old and folders[2] == first  # found, whatever their names
    assert [f.name for f in (folders[1], folders[3])] == ["seed=1,strategy=freeze", "seed=1,strategy=full"]


def test_two_settings_never_share_a_folder(tmp_path: Path):
    # A first sweep at 8 images per class; the same command at 16 into the same folder.
    first = [[*job(f"strategy={s}"), "data.per_class=8"] for s in ("freeze", "full")]
    for folder, overrides in zip(jobdirs.assign(tmp_path, first, EXCLUDED), first, strict=True):
        ran(folder, overrides)
    (tmp_path / "strategy=full,data.per_class=16").mkdir()  # not a job folder: its name is taken all the same

    second = [[*job(f"strategy={s}"), "data.per_class=16"] for s in ("freeze", "full")]
    folders = jobdirs.assign(tmp_path, second, EXCLUDED)

    assert folders[0].name == "strategy=freeze,data.per_class=16"  # lengthened by what differs
    assert folders[1].name.startswith("strategy=full,data.per_class=16,cfg=")  # then by a hash
    assert not {f.name for f in folders} & {
        "strategy=freeze",
        "strategy=full",
        "strategy=full,data.per_class=16",
    }


def test_one_job_and_odd_values_give_one_safe_path_component(tmp_path: Path):
    [alone] = jobdirs.assign(tmp_path, [job("strategy=freeze")], EXCLUDED)
    assert alone.parent == tmp_path and alone.name == "strategy=freeze"  # what names a run, alone
    [bare] = jobdirs.assign(tmp_path / "other", [["optim.weight_decay=0.1"]], EXCLUDED)
    assert bare.name == "run"
    jobs = [job("strategy.train_stages=[stage3,stage4]"), job("data.root='/a b/${x}'")]
    for folder in jobdirs.assign(tmp_path, jobs, EXCLUDED):
        assert folder.parent == tmp_path and "/" not in folder.name and "$" not in folder.name
    long = jobdirs.safe("data.root=" + "x" * 400)
    assert len(long.encode()) <= jobdirs.MAX_NAME and long != jobdirs.safe("data.root=" + "x" * 401)


def test_the_plan_lists_the_rounds_folders(tmp_path: Path):
    jobs = [job("seed=0"), job("seed=1")]
    folders = jobdirs.assign(tmp_path / "tune", jobs, EXCLUDED)
    jobdirs.write_plan(tmp_path, "tune", folders, jobs)
    assert jobdirs.read_plan(tmp_path) == folders
    assert jobdirs.subdir_override(tmp_path, folders[0]) == "hydra.sweep.subdir='tune/seed=0'"
    assert jobdirs.read_plan(tmp_path / "elsewhere") is None
