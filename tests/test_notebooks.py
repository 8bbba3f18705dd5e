"""The notebooks are code users copy: they must run as written (here on a smaller budget)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, shared_data

# Cheaper settings for the test, spliced into the notebook's override list.
QUICK = '"trainer.enable_progress_bar=false", "data.image_size=96", "trainer.limit_train_batches=2",'


@pytest.mark.slow
def test_compare_strategies_notebook_runs(tmp_path):
    data = shared_data("hymenoptera")
    notebook = json.loads((REPO / "notebooks" / "01_compare_strategies.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        source = source.replace('Path("../../shared/data/hymenoptera")', f'Path("{data}")')
        source = source.replace('"../outputs/notebook/', f'"{tmp_path}/')
        source = source.replace('"trainer.enable_progress_bar=false",', QUICK)
        exec(compile(source, "notebook", "exec"), namespace)
    assert set(namespace["results"]) == {"freeze", "partial", "full"}
    assert all(0.0 <= r["metrics"]["test/acc"] <= 1.0 for r in namespace["results"].values())
    assert namespace["best"].exists() and str(namespace["best"]).startswith(str(tmp_path))
