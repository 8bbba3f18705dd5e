"""Files a run holds or writes, under failure: a run folder's claim ends with the process that holds it,
even when that process is SIGKILLed while forked children (DataLoader workers) are still alive, so an
immediate re-run is not refused; a decode cache that cannot be written leaves the run going."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

from tlbench.results.files import claim_holder

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from tlbench.run.folder import claimed

    run_dir = Path(sys.argv[1])
    with claimed(run_dir):
        child = os.fork()
        if child == 0:  # a worker that outlives its parent
            time.sleep(120)
            os._exit(0)
        (run_dir / "child.tmp").write_text(str(child))
        os.replace(run_dir / "child.tmp", run_dir / "child.pid")
        time.sleep(120)
    """
)


def test_a_sigkilled_holder_frees_the_claim_although_its_forked_child_lives_on(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)])
    child_pid_file = run_dir / "child.pid"
    try:
        while not child_pid_file.exists():  # an event, not a time: the child exists and the claim is held
            assert holder.poll() is None, "the holder exited before forking"
            time.sleep(0.05)
        child = int(child_pid_file.read_text())
        assert claim_holder(run_dir) is not None
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child is still alive ...
        assert claim_holder(run_dir) is None  # ... and the folder is free
    finally:
        holder.kill()
        holder.wait()
        if child_pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child_pid_file.read_text()), signal.SIGKILL)


def test_an_unwritable_cache_leaves_the_run_going_and_no_partial_file(tmp_path, monkeypatch, caplog):
    """torch.save reports a read-only or full disk as RuntimeError, not OSError: still only a warning."""
    import torch

    from tlbench.data import decode

    def failing_save(payload, handle):
        handle.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc] open file failed: Read-only file system")

    monkeypatch.setattr(torch, "save", failing_save)
    target = tmp_path / "cache" / "decoded.pt"
    decode.save_cached(target, {"images": torch.zeros(1)})
    assert "continuing without a disk cache" in caplog.text
    assert not target.exists() and list(target.parent.iterdir()) == []
