from __future__ import annotations

import json
import sys

import pytest

from tlbench.results.files import read_results, write_json_atomic
from tlbench.run.runtime import keep_freed_memory


def test_results_are_read_only_when_complete(tmp_path):
    assert read_results(tmp_path) is None
    (tmp_path / "results.json").write_text('{"status": "compl')
    assert read_results(tmp_path) is None
    write_json_atomic(tmp_path / "results.json", {"status": "running"})
    assert read_results(tmp_path) is None
    write_json_atomic(tmp_path / "results.json", {"status": "complete", "metrics": {"test/acc": 0.5}})
    assert read_results(tmp_path)["metrics"] == {"test/acc": 0.5}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_allocator_is_told_to_keep_freed_memory():
    assert keep_freed_memory() is True
