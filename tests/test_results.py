from __future__ import annotations

import json
import sys

import pytest

from tlbench.results.files import read_results, read_results_or_reason, write_atomic, write_json_atomic
from tlbench.run.runtime import keep_freed_memory


def test_results_are_read_only_when_complete(tmp_path):
    assert read_results(tmp_path) is None
    assert read_results_or_reason(tmp_path) == (None, "no results.json")
    (tmp_path / "results.json").write_text('{"status": "compl')
    assert read_results(tmp_path) is None
    write_json_atomic(tmp_path / "results.json", {"status": "running"})
    assert read_results(tmp_path) is None
    write_json_atomic(tmp_path / "results.json", {"status": "complete", "metrics": {"test/acc": 0.5}})
    assert read_results(tmp_path)["metrics"] == {"test/acc": 0.5}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    path = write_atomic(tmp_path / "sub" / "file.bin", b"old")

    def write_half(handle):
        handle.write(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, write_half)
    assert path.read_bytes() == b"old" and [p.name for p in path.parent.iterdir()] == ["file.bin"]
    write_atomic(path, "new text")
    assert path.read_text() == "new text"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_allocator_is_told_to_keep_freed_memory():
    assert keep_freed_memory() is True
