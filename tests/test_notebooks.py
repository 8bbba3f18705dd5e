"""The notebooks are code users copy: they run as shipped, from their own folder (Jupyter's working
directory), with the data where the notebook says to put it. Only documented parameters change (here: extra
overrides that shrink the runs); no path in the notebook is rewritten."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import REPO, shared_data

NOTEBOOK = REPO / "notebooks" / "01_compare_strategies.ipynb"
# Documented in the notebook's first cell: extra overrides for every run, to keep the test to seconds a run.
QUICK = "data.image_size=96 trainer.limit_train_batches=2 trainer.limit_val_batches=2"


def run_notebook(path: Path, cwd: Path, monkeypatch) -> dict:
    """Every code cell in order in one namespace, in `cwd`, as a kernel started there would run them."""
    monkeypatch.chdir(cwd)
    namespace: dict = {}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(path), "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_compare_strategies_notebook_runs_as_shipped(tmp_path, monkeypatch):
    # A fresh clone's layout: notebooks/ beside data/ (where `make hymenoptera-data` puts the images).
    clone = tmp_path / "clone"
    (clone / "notebooks").mkdir(parents=True)
    (clone / "data").mkdir()
    (clone / "data" / "hymenoptera_data").symlink_to(shared_data("hymenoptera"))
    monkeypatch.setenv("TLBENCH_NOTEBOOK_OVERRIDES", QUICK)
    for name in ("TLBENCH_NOTEBOOK_DATA", "TLBENCH_NOTEBOOK_EPOCHS"):
        monkeypatch.delenv(name, raising=False)
    namespace = run_notebook(NOTEBOOK, clone / "notebooks", monkeypatch)
    assert set(namespace["results"]) == {"freeze", "partial", "full"}
    for strategy, result in namespace["results"].items():
        assert 0.0 <= result["metrics"]["test/acc"] <= 1.0
        assert (clone / "outputs" / "notebook" / strategy / "results.json").is_file()
    best = Path(os.path.abspath(clone / "notebooks" / namespace["best"]))
    assert best.is_file() and best.is_relative_to(clone / "outputs" / "notebook" / "full")


def test_the_notebook_names_no_path_outside_the_repository():
    """`../shared` is this project's test data, not a newcomer's: the notebook must not depend on it."""
    code = "".join(
        "".join(cell["source"])
        for cell in json.loads(NOTEBOOK.read_text())["cells"]
        if cell["cell_type"] == "code"
    )
    assert "shared" not in code and "../../" not in code
