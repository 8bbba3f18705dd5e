"""Paths as users type them: `data.root=~/data` (which Hydra's grammar rejects, unexpanded by zsh and bash
after a dotted key), Hydra-quoted `'~/data'` and `$HOME/data`; and a run or sweep folder Hydra cannot create
(read-only parent, a file in the way), which failed in Hydra's own traceback before tlbench's code ran."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from conftest import make_image_folder, small
from tlbench.run.checks import check_config
from tlbench.run.train import compose_config


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    make_image_folder(home / "images", per_split={"train": 3, "val": 1})
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DATA", str(home))
    return home


def one_error(done) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr
    return errors[0]


def test_an_unquoted_tilde_reaches_the_run_expanded(home, tmp_path, cli):
    """No lexer error: the value arrives as the shell would have expanded it (here: no such folder)."""
    done = cli(*small(tmp_path), "data.root=~/no-such-folder", f"hydra.run.dir={tmp_path / 'run'}")
    assert f"data.root={home}/no-such-folder does not exist" in one_error(done)


def test_a_tilde_in_each_value_of_a_sweep_is_expanded(home):
    from tlbench.run.checks import expand_tilde_overrides

    assert expand_tilde_overrides(["data.root=~/a,~/b", "seed=1", "~trainer.max_time", "+x.y=~"]) == [
        f"data.root={home}/a,{home}/b", "seed=1", "~trainer.max_time", f"+x.y={home}",
    ]  # fmt: skip
    (quoted,) = expand_tilde_overrides(["hydra.run.dir=~/runs (1)"])
    assert quoted == f"hydra.run.dir='{home}/runs (1)'"  # Hydra would split the unquoted ( )


@pytest.mark.parametrize("root", ['"~/images"', "'~/images'", "$HOME/images", "$DATA/images"])
def test_a_quoted_tilde_or_a_variable_in_data_root_is_expanded(root, home, tmp_path):
    cfg = compose_config([*small(tmp_path), f"data.root={root}"])
    check_config(cfg)  # the folder is found: no "does not exist"


def test_a_variable_that_leads_nowhere_names_both_forms(home, tmp_path):
    cfg = compose_config([*small(tmp_path), "data.root=$HOME/missing"])
    with pytest.raises(ValueError, match=rf"data.root=\$HOME/missing \({home}/missing\) does not exist"):
        check_config(cfg)


def test_a_run_folder_under_a_file_is_one_line(home, tmp_path, cli):
    (tmp_path / "results").write_text("a file where a folder should be")
    done = cli(*small(home / "images"), f"hydra.run.dir={tmp_path / 'results' / 'run'}")
    line = one_error(done)
    assert "hydra.run.dir" in line and str(tmp_path / "results") in line


def test_a_run_folder_under_a_read_only_parent_is_one_line(home, tmp_path, cli, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # root writes anywhere: a mount is faked
    done = cli(*small(home / "images"), f"hydra.run.dir={tmp_path / 'mounted' / 'run'}")
    line = one_error(done)
    assert "Read-only file system" in line and "hydra.run.dir" in line
    assert not (tmp_path / "mounted").exists()


def test_the_default_run_folder_in_a_read_only_working_folder_is_one_line(home, tmp_path, cli, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    done = cli(*small(home / "images"), cwd=tmp_path)  # outputs/runs/<time>_<choices>: resolved first
    assert str(tmp_path) in one_error(done)
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_folder_under_a_file_is_one_line(home, tmp_path, cli):
    (tmp_path / "sweeps").write_text("a file")
    done = cli("-m", *small(home / "images"), "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweeps' / 'mine'}")
    assert "hydra.sweep.dir" in one_error(done)
