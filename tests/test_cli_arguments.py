"""predict and export with the option values a new user types: numbers out of range, output paths under a
file, in a folder, on a read-only or full disk. Each is one line naming the option (argparse's usage error
for a bad number), before any work; a value above what the model has is clamped and said."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from conftest import save_untrained_checkpoint, write_images
from tlbench.serve import export as export_module
from tlbench.serve.export import main as export_main
from tlbench.serve.predict import main as predict_main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_untrained_checkpoint(tmp_path_factory.mktemp("run") / "best.ckpt", ["normal", "pneumonia"])


@pytest.fixture
def image(tmp_path) -> Path:
    return write_images(tmp_path / "photos", (120, 120, 120), 1)[0]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


@pytest.mark.parametrize(
    ("option", "value"),
    [("--top-k", "0"), ("--top-k", "-1"), ("--top-k", "abc"), ("--top-k", "1.5"), ("--batch-size", "0"),
     ("--batch-size", "-3"), ("--workers", "-1"), ("--workers", "two")],
)  # fmt: skip
def test_a_bad_number_is_argparses_one_line_naming_the_option(option, value, capsys):
    with pytest.raises(SystemExit) as exited:
        predict_main(["model.ckpt", "photo.jpg", option, value])
    assert exited.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"argument {option}" in line and value in line


def test_top_k_above_the_classes_shows_them_all_and_says_so(checkpoint, image, capsys):
    assert predict_main([str(checkpoint), str(image), "--top-k", "5", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.strip().splitlines()
    assert "normal" in line and "pneumonia" in line
    assert "--top-k 5 is more than the model's 2 classes" in captured.err
    assert predict_main([str(checkpoint), str(image), "--top-k", "1", "--workers", "0"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.count("%") == 1


def test_cam_under_a_file_is_one_line_before_predicting(checkpoint, image, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    assert predict_main([str(checkpoint), str(image), "--cam", str(blocker / "cams")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing predicted: the check comes first
    (line,) = error_lines(captured.err)
    assert "--cam" in line and str(blocker) in line


def file_in_the_way(tmp_path: Path) -> str:
    (tmp_path / "taken").write_text("a file")
    return str(tmp_path / "taken" / "model.onnx")


def read_only(tmp_path: Path, monkeypatch) -> str:
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    return str(tmp_path / "mounted" / "model.onnx")


@pytest.mark.parametrize("place", ["file_in_the_way", "read_only"])
def test_export_out_that_cannot_be_written_is_one_line(place, checkpoint, tmp_path, monkeypatch, capsys):
    out = file_in_the_way(tmp_path) if place == "file_in_the_way" else read_only(tmp_path, monkeypatch)
    loaded = []
    monkeypatch.setattr(export_module, "load_checkpoint", lambda path: loaded.append(path))
    assert export_main([str(checkpoint), "--out", out]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --out:") and "choose another --out" in line
    assert loaded == [], "checked before the checkpoint is even loaded"


def test_export_out_a_folder_writes_into_it(checkpoint, tmp_path, capsys):
    folder = tmp_path / "exports"
    folder.mkdir()
    assert export_main([str(checkpoint), "--format", "torchscript", "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "best.pt.json"]


def test_export_on_a_full_disk_is_one_line_and_leaves_no_file(checkpoint, tmp_path, monkeypatch, capsys):
    """Both formats are serialised in memory and written by one writer; torchscript is the one whose own
    writer aborted the process (exit 134, a truncated file left) on a full disk."""

    def full(path, content):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export_module, "write_atomic", full)
    out = tmp_path / "out" / "model.bin"
    assert export_main([str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(out) in line and "No space left on device" in line and "MB free" in line
    assert list(out.parent.iterdir()) == []
