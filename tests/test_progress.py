"""What a run shows: one line per epoch in the log (train.log, a redirected stream, a notebook), a progress
bar only on a terminal, the Python API's INFO lines, and none of the third-party lines tlbench triggers."""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import ProgressBar

from conftest import make_image_folder, small
from tlbench.run.logs import LOG_FILE, api_logging, quiet_expected_noise
from tlbench.run.progress import EpochLog, duration, say, show_progress_bar
from tlbench.run.train import compose_config, run
from tlbench.run.trainer import trainer_options

EPOCH_LINE = re.compile(
    r"epoch (\d+)/2 \| train loss \d+\.\d+ acc \d\.\d+ \| val loss \d+\.\d+ acc \d\.\d+"
    r"( \(new best\)| \(best acc \d\.\d+\)) \| \d+ img/s \| \d+:\d\d/epoch, ETA \d+:\d\d"
)
# The Lightning lines a fresh tlbench run used to print, each sounding like a failure or selling something.
NOISE = (
    "was called without a model",
    "no last checkpoint available",
    "LeafSpec",
    "smaller than the logging interval",
    "in eval mode",
    "💡 Tip",
)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_run_logs_one_line_per_epoch_and_none_of_the_expected_third_party_noise(cli, tmp_path, recwarn):
    images = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    lightning_info, text = logging.getLogger("lightning.pytorch.utilities.rank_zero"), io.StringIO()
    catch = logging.StreamHandler(text)
    lightning_info.addHandler(catch)
    try:
        # strategy=freeze: BatchNorm in eval mode; 2 batches < log_every_n_steps; a fresh folder: no last.ckpt
        ran = cli(*small(images), "strategy=freeze", "trainer.max_epochs=2", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    finally:
        lightning_info.removeHandler(catch)
    assert ran.returncode == 0, ran.stderr
    epochs = [int(m.group(1)) for m in map(EPOCH_LINE.search, ran.stdout.splitlines()) if m]
    assert epochs == [1, 2], ran.stdout
    shown = ran.stdout + ran.stderr + text.getvalue() + "\n".join(str(w.message) for w in recwarn)
    assert [noise for noise in NOISE if noise in shown] == []
    assert "FLOPs" not in shown


def test_only_the_expected_messages_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_expected_noise():
            warnings.warn("Found 3 module(s) in eval mode at the start of training", stacklevel=1)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", stacklevel=1)
            warnings.warn("The dataloader does not have many workers", stacklevel=1)
        warnings.warn("Found 3 module(s) in eval mode at the start of training", stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "The dataloader does not have many workers",
        "Found 3 module(s) in eval mode at the start of training",  # outside a run: Lightning's again
    ]


def test_the_progress_bar_is_drawn_only_on_a_terminal(tmp_path, monkeypatch):
    cfg = compose_config([*small(tmp_path), "trainer.enable_progress_bar=true"])
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # redirected (SLURM, nohup, `> log`)
    assert trainer_options(cfg)["enable_progress_bar"] is False
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    options = trainer_options(cfg)
    assert options["enable_progress_bar"] is True
    assert show_progress_bar(False) is False  # trainer.enable_progress_bar=false: never
    trainer = L.Trainer(**options, logger=False)
    assert any(isinstance(c, ProgressBar) for c in trainer.callbacks)


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (0, 7.4, 65, 3600 + 62)] == ["0:00", "0:07", "1:05", "1:01:02"]


def test_the_python_api_prints_the_cli_lines_and_writes_train_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # plain `python`, a notebook: no logging
    images = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    run_dir = tmp_path / "run"
    run([*small(images), "trainer.max_epochs=2", "logger=none", "trainer.enable_progress_bar=false"], run_dir)
    out = capsys.readouterr().out
    for line in ("data: 2 classes ['cat', 'dog']", "parameters train (stages:", "epoch 2/2 | train loss"):
        assert out.count(line) == 1, out
    assert "epoch 1/2 | train loss" in (run_dir / LOG_FILE).read_text()
    assert not logging.getLogger("tlbench").handlers  # nothing left behind for the caller's next cell


def test_api_logging_keeps_a_configured_logging_and_prints_nothing_twice(tmp_path, monkeypatch, capsys):
    configured = io.StringIO()
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler(configured)])
    with api_logging(tmp_path / "run"):
        logging.getLogger("tlbench").warning("one line")
    assert configured.getvalue() == "one line\n"
    assert capsys.readouterr().out == "" and not (tmp_path / "run" / LOG_FILE).exists()


@pytest.mark.parametrize("level", [logging.WARNING, logging.NOTSET])
def test_api_logging_keeps_a_level_the_caller_set(tmp_path, monkeypatch, capsys, level):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    tlbench, before = logging.getLogger("tlbench"), logging.getLogger("tlbench").level
    tlbench.setLevel(level)
    try:
        with api_logging(tmp_path / "run"):
            tlbench.info("an info line")
        assert tlbench.level == level
    finally:
        tlbench.setLevel(before)
    assert ("an info line" in capsys.readouterr().out) is (level == logging.NOTSET)


def test_a_long_epoch_says_how_far_it_is(caplog):
    epoch_log = EpochLog("val/acc", "max", every_s=0.0)  # a line at every batch, as an hour-long epoch would
    trainer = SimpleNamespace(
        is_global_zero=True, num_training_batches=5, current_epoch=1, max_epochs=3, progress_bar_callback=None
    )
    with caplog.at_level(logging.INFO, logger="tlbench"):
        epoch_log.on_train_epoch_start(trainer, None)
        epoch_log.on_train_batch_end(trainer, None, None, (None, [0] * 8), batch_idx=2)
    assert re.fullmatch(r"epoch 2/3: batch 3/5, \d+ img/s", caplog.messages[-1]), caplog.messages


def test_with_a_live_bar_the_line_is_printed_above_it_and_still_reaches_train_log(tmp_path):
    printed = []
    bar = SimpleNamespace(is_enabled=True, print=printed.append)  # Lightning's bar: print() above the bar
    trainer = SimpleNamespace(progress_bar_callback=bar)
    tlbench, file = logging.getLogger("tlbench"), logging.FileHandler(tmp_path / LOG_FILE)
    console = logging.StreamHandler(io.StringIO())
    tlbench.addHandler(file)
    tlbench.addHandler(console)
    level = tlbench.level
    tlbench.setLevel(logging.INFO)
    try:
        say(trainer, "epoch 1/2 | train loss 0.500")
    finally:
        tlbench.setLevel(level)
        for handler in (file, console):
            tlbench.removeHandler(handler)
            handler.close()
    assert printed == ["epoch 1/2 | train loss 0.500"]
    assert (tmp_path / LOG_FILE).read_text() == "epoch 1/2 | train loss 0.500\n"
    assert console.stream.getvalue() == ""  # a plain write would garble the bar
