"""The disk caches (decoded images, bad-image checks) are an optimisation: whatever goes wrong writing or
reading them — a read-only or full disk, a file where the folder should be, no permission, a corrupt
entry — the run goes on without them, with one warning line per folder; and an image rewritten with the
same size and modification time is decoded again, never served from the old cache."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder, small
from tlbench.data import decode
from tlbench.data.decode import decode_to_uint8
from tlbench.data.pipelines import find_unreadable
from tlbench.run.train import compose_config, train


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test is a new process as far as the once-per-folder warning goes."""
    monkeypatch.setattr(decode, "_unwritable", set(), raising=False)


def images(folder: Path, count: int = 3, seed: int = 0) -> list[str]:
    """BMPs: their size depends only on width and height, so a rewrite can keep the size exactly."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i}.bmp"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def read_only_disk(monkeypatch, cache: Path) -> None:
    """What torch.save raises on a read-only mount (the issue's traceback), not an OSError."""

    def save(*args, **kwargs):
        raise RuntimeError(f"File {cache}/x.pt cannot be opened. open file failed: Read-only file system")

    monkeypatch.setattr(torch, "save", save)


def full_disk(monkeypatch, cache: Path) -> None:
    real_save = torch.save

    def save(obj, handle, *args, **kwargs):
        real_save({"part": 1}, handle)  # some bytes land, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def file_in_the_way(monkeypatch, cache: Path) -> None:
    cache.write_text("not a folder")


def permission_denied(monkeypatch, cache: Path) -> None:
    def replace(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "replace", replace)


def anything_else(monkeypatch, cache: Path) -> None:
    """A failure nobody listed (a pickling error, a bug in a file system driver): still only a warning."""

    def save(*args, **kwargs):
        raise ValueError("something nobody expected")

    monkeypatch.setattr(torch, "save", save)


FAILURES = [read_only_disk, full_disk, file_in_the_way, permission_denied, anything_else]


@pytest.mark.parametrize("fail", FAILURES, ids=lambda f: f.__name__)
def test_a_cache_that_cannot_be_written_is_one_warning_and_no_cache(fail, tmp_path, monkeypatch, caplog):
    paths, cache = images(tmp_path / "img"), tmp_path / "cache"
    expected = decode_to_uint8(paths, 16).images
    fail(monkeypatch, cache)
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        first = decode_to_uint8(paths, 16, cache_dir=cache)
        again = decode_to_uint8(paths, 12, cache_dir=cache)  # another entry in the same folder
        assert find_unreadable(paths, str(cache)) == {}  # the streaming path's bad-image cache
    assert torch.equal(first.images, expected) and again.images.shape[-1] == 12
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert str(cache) in message and "continuing without a disk cache" in message and "\n" not in message
    assert "TLBENCH_CACHE_DIR" in message and "data.cache_dir=null" in message
    if cache.is_dir():
        assert list(cache.iterdir()) == [], "no partial or temporary file is left behind"


def test_a_full_disk_says_so_and_how_much_is_free(tmp_path, monkeypatch, caplog):
    read_only_disk(monkeypatch, tmp_path / "cache")  # torch's RuntimeError names no reason a user can act on
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        decode_to_uint8(images(tmp_path / "img"), 16, cache_dir=tmp_path / "cache")
    assert "RuntimeError while writing" in caplog.text and "MB free" in caplog.text


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: entry.write_bytes(b""),
        lambda entry: entry.write_bytes(entry.read_bytes()[: len(entry.read_bytes()) // 2]),
        lambda entry: entry.write_bytes(os.urandom(4096)),
        lambda entry: torch.save(["not", "a", "cache"], entry),
    ],
    ids=["empty", "truncated", "garbage", "another_payload"],
)
def test_a_damaged_cache_entry_is_a_miss(damage, tmp_path):
    paths, cache = images(tmp_path / "img"), tmp_path / "cache"
    first = decode_to_uint8(paths, 16, cache_dir=cache).images
    (entry,) = cache.glob("*.pt")
    damage(entry)
    assert torch.equal(decode_to_uint8(paths, 16, cache_dir=cache).images, first)


def test_a_folder_where_the_cache_entry_should_be_is_a_miss(tmp_path):
    paths, cache = images(tmp_path / "img"), tmp_path / "cache"
    first = decode_to_uint8(paths, 16, cache_dir=cache).images
    (entry,) = cache.glob("*.pt")
    entry.unlink()
    entry.mkdir()
    assert torch.equal(decode_to_uint8(paths, 16, cache_dir=cache).images, first)


def test_an_image_rewritten_with_the_same_size_and_time_is_decoded_again(tmp_path):
    paths, cache = images(tmp_path / "img"), tmp_path / "cache"
    first = decode_to_uint8(paths, 16, cache_dir=cache).images
    before = os.stat(paths[1])
    Image.new("RGB", (24, 20), (0, 0, 0)).save(paths[1])  # new pixels, same dimensions: same file size
    os.utime(paths[1], ns=(before.st_atime_ns, before.st_mtime_ns))  # cp -p, rsync -t, touch -r
    after = os.stat(paths[1])
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = decode_to_uint8(paths, 16, cache_dir=cache).images
    assert again[1].max() == 0, "the new (black) pixels, not the cached ones"
    assert torch.equal(again[0], first[0])


def test_a_cache_dir_with_a_tilde_or_variable_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CACHES", str(tmp_path / "caches"))
    monkeypatch.chdir(tmp_path)  # unexpanded, the cache would land in ./~ and ./$CACHES
    paths = images(tmp_path / "img")
    decode_to_uint8(paths, 16, cache_dir="~/tlbench-cache")
    decode_to_uint8(paths, 16, cache_dir="$CACHES/tlbench")
    assert len(list((tmp_path / "home" / "tlbench-cache").glob("*.pt"))) == 1
    assert len(list((tmp_path / "caches" / "tlbench").glob("*.pt"))) == 1
    assert not Path("~").exists() and not Path("$CACHES").exists()


def test_a_run_with_an_unwritable_cache_finishes_with_one_warning(tmp_path, monkeypatch, caplog):
    root = make_image_folder(tmp_path / "images", per_split={"train": 4, "val": 2})
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(blocked))
    overrides = [*small(root), "logger=none", "trainer.max_epochs=1", "data.pipeline=memory"]
    with caplog.at_level(logging.WARNING, logger="tlbench"):
        results = train(compose_config(overrides), tmp_path / "run")
    assert results["status"] == "complete"
    assert caplog.text.count("cannot be written") == 1
