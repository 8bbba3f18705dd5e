"""Every command and Python snippet in README.md works as written from a fresh clone (issue 18.1/18.9).

The commands are read from the README itself: one added or changed there fails
`test_every_readme_command_is_run_or_has_a_reason` until it is run here or given a reason not to be. The fast
tests compose every `tlbench.train` command's config; the slow ones run each command and snippet cheaply
(one small batch, 32 px, generated images where the README has the tutorial's) from the clone's root and
from another directory, with relative and absolute paths."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

import tlbench.train
from conftest import REPO, make_image_folder, write_images
from tlbench.run.checks import check_config
from tlbench.run.train import compose_config
from tlbench.serve import export, predict

README = REPO / "README.md"
# README commands not run here, and why (a reason, never "works").
NOT_RUN = {
    "make train": "its data route: tests/test_quickstart_data.py; its time is measured by hand (README)",
    "make test": "the fast suite this file is part of",
    "make hymenoptera-data": "downloads or links real data; a missing folder's message is tested below",
    "source .venv/bin/activate": "shell setup",
    "tensorboard --logdir outputs/": "TensorBoard's own command",
    "python -m tlbench.report outputs/multirun/strategies": "a sweep's report: tests/test_report.py",
    "python -m tlbench.train -m sweep=strategies_backbones hydra/launcher=slurm"
    " hydra.launcher.partition=gpu": "needs a SLURM cluster (tests/test_sweep.py checks the launcher config)",
}
# Cheap: one batch of train and val, 32 px, no workers, no logger; downloads replaced by random init.
CHEAP = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "data.image_size=32",
    "data.num_workers=0",
    "data.batch_size=4",
    "logger=none",
    "trainer.enable_progress_bar=false",
]
OFFLINE_BACKBONES = ("efficientnet_lite0",)


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def readme_commands() -> list[str]:
    """Each line of the README's bash blocks, without its trailing comment."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for block in fenced("bash") for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def tlbench_commands(module: str) -> list[list[str]]:
    prefix = f"python -m tlbench.{module} "
    return [
        shlex.split(c.removeprefix(prefix))
        for c in readme_commands()
        if c.startswith(prefix) and c not in NOT_RUN
    ]


def clone_layout(root: Path, finished_run) -> dict[str, str]:
    """What a newcomer's clone holds after the README's setup (generated images where the real ones would
    be), and the README's placeholders → paths in it (absolute where the README's are)."""
    make_image_folder(root / "data" / "hymenoptera_data", ("ants", "bees"), {"train": 4, "val": 4})
    xray = make_image_folder(root.parent / "chest_xray", ("NORMAL", "PNEUMONIA"), {"train": 4, "val": 4})
    run = root / "outputs" / "runs" / "finished"
    shutil.copytree(finished_run.run_dir, run)
    write_images(root, (200, 100, 50), 1)[0].rename(root / "photo.jpg")
    return {"/data/chest_xray": str(xray), "outputs/runs/<run>": "outputs/runs/finished"}


def substituted(args: list[str], places: dict[str, str]) -> list[str]:
    for placeholder, path in places.items():
        args = [arg.replace(placeholder, path) for arg in args]
    return args


def single_run(args: list[str]) -> list[str]:
    """A multirun's first job: `-m` dropped, each comma list's first value."""
    return [re.sub(r"=([^,=]+),.*$", r"=\1", arg) for arg in args if arg != "-m"]


def test_every_readme_command_is_run_or_has_a_reason():
    commands = readme_commands()
    unknown = [c for c in commands if c not in NOT_RUN and not c.startswith("python -m tlbench.")]
    assert not unknown, f"README commands neither run by tests/test_readme.py nor in its NOT_RUN: {unknown}"
    stale = [c for c in NOT_RUN if c not in commands]
    assert not stale, f"NOT_RUN lists commands the README no longer has: {stale}"
    assert len(tlbench_commands("train")) >= 4 and tlbench_commands("predict") and tlbench_commands("export")


def test_every_readme_train_command_composes_and_passes_the_checks(tmp_path, monkeypatch, finished_run):
    clone = tmp_path / "clone"
    places = clone_layout(clone, finished_run)
    monkeypatch.chdir(clone)
    for args in tlbench_commands("train"):
        run = check_config(compose_config(single_run(substituted(args, places))))
        if any(
            arg.startswith("data.root=") for arg in args
        ):  # the command's own root, never the experiment's
            given = next(a for a in substituted(args, places) if a.startswith("data.root="))
            assert run.data.root == given.removeprefix("data.root=")


def test_hymenoptera_data_root_is_overridable_and_a_missing_one_says_where_to_get_it(tmp_path, cli):
    run = check_config(compose_config(["experiment=hymenoptera", f"data.root={tmp_path}"]))
    assert run.data.root == str(tmp_path)
    ran = cli("experiment=hymenoptera", cwd=tmp_path)  # a fresh directory: no data/hymenoptera_data
    assert ran.returncode != 0
    error = next(line for line in (ran.stdout + ran.stderr).splitlines() if "data.root=" in line)
    assert str(tmp_path / "data" / "hymenoptera_data") in error
    assert (
        "https://download.pytorch.org/tutorial/hymenoptera_data.zip" in error
        and "make hymenoptera-data" in error
    )


def cheap(args: list[str]) -> list[str]:
    offline = (
        any(f"backbone={name}" in args for name in OFFLINE_BACKBONES) or "experiment=hymenoptera" in args
    )
    return [*args, *CHEAP, *([] if offline else ["backbone.weights=null"])]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["clone", "elsewhere"])
def test_readme_commands_run_as_written(where, tmp_path, monkeypatch, finished_run, cli, capsys):
    clone = tmp_path / "clone"
    places = clone_layout(clone, finished_run)
    cwd = clone
    if where == "elsewhere":  # another directory: the clone's relative paths given from there, absolute too
        cwd = tmp_path / "elsewhere"
        cwd.mkdir()
        places |= {
            "data/hymenoptera_data": os.path.relpath(clone / "data" / "hymenoptera_data", cwd),
            "outputs/runs/<run>": str(clone / "outputs" / "runs" / "finished"),
            "photo.jpg": str(clone / "photo.jpg"),
        }
    monkeypatch.chdir(cwd)
    for number, args in enumerate(tlbench_commands("train")):
        if "-m" in args:
            continue  # sweeps: composed above; their machinery is tests/test_sweep.py's
        args = substituted(args, places)
        if "experiment=hymenoptera" in args and where == "elsewhere":
            args.append(f"data.root={places['data/hymenoptera_data']}")
        ran = cli(*cheap(args), f"hydra.run.dir=outputs/readme/{number}")
        assert ran.returncode == 0, (args, ran.stdout[-2000:], ran.stderr[-2000:])
        assert (cwd / "outputs" / "readme" / str(number) / "results.json").is_file()
    for args in tlbench_commands("predict"):
        assert predict.main(substituted(args, places)) == 0, (args, capsys.readouterr())
    for args in tlbench_commands("export"):
        assert export.main(substituted(args, places)) == 0, (args, capsys.readouterr())


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch, finished_run):
    clone = tmp_path / "clone"
    places = clone_layout(clone, finished_run)
    monkeypatch.chdir(clone)
    real_run = tlbench.train.run
    monkeypatch.setattr(
        tlbench.train, "run", lambda overrides, run_dir=None: real_run(cheap(overrides), run_dir)
    )
    snippets = fenced("python")
    assert len(snippets) >= 2
    namespace: dict = {}  # one session, snippet after snippet, as pasted into one notebook
    for snippet in snippets:
        for placeholder, path in places.items():
            snippet = snippet.replace(placeholder, path)
        exec(compile(snippet, "README.md", "exec"), namespace)
    assert (clone / namespace["results"]["run_dir"] / "results.json").is_file()
