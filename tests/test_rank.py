"""`python -m tlbench.rank`: backbones named as in training, the training split embedded once per backbone
(features cached), rank.json / rank.png / a table, and one-line errors for what a new user gets wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from conftest import TINY, data_config, make_image_folder, run_entry
from tlbench.config.schema import ConfigError
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.preset import Preset
from tlbench.run import rank as rank_module
from tlbench.run.rank import candidates


@pytest.fixture
def rank_cli(capsys, monkeypatch):
    """`python -m tlbench.rank <args>` in this process (as conftest's `cli` does for tlbench.train)."""

    def run(*args: str) -> tuple[int, str, str]:
        ran = run_entry(rank_module.main, "tlbench.rank", args, capsys, monkeypatch)
        return ran.returncode, ran.stdout, ran.stderr

    return run


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", per_split={"train": 10, "val": 4})


def tiny_overrides(images: Path, out: Path) -> list[str]:
    return [
        "data=imagefolder", f"data.root={images}", "data.image_size=32", "data.num_workers=0",
        f"hydra.run.dir={out}", "rank.folds=3",
    ]  # fmt: skip


def tiny_checkpoint(path: Path) -> Path:
    """timm's test_resnet with its own (random) 1000-class classifier: a source classifier for LEEP."""
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    return path


@pytest.mark.slow  # an end-to-end rank: model builds, the probe's sklearn, the chart (seconds)
def test_rank_scores_each_backbone_writes_rank_json_and_a_chart(rank_cli, images, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "test_resnet.pth")
    entries = f"rank.backbones=[{TINY},{{name:{TINY},checkpoint:{checkpoint},label:from-file}}]"
    args = [*tiny_overrides(images, tmp_path / "out"), entries, "backbone.weights=null"]
    status, out, err = rank_cli(*args)
    assert status == 0, err
    result = json.loads((tmp_path / "out" / "rank.json").read_text())
    rows = {row["label"]: row for row in result["backbones"]}
    assert list(rows) == [f"{TINY} (random init)", "from-file"]
    assert result["train_images"] == 20 and result["classes"] == ["cat", "dog"]
    random_init, from_file = rows[f"{TINY} (random init)"], rows["from-file"]
    # No source classifier without pretrained weights: LEEP and NCE say so instead of inventing a number.
    assert random_init["scores"]["leep"] is None and "no source classifier" in random_init["source_note"]
    assert from_file["scores"]["leep"] < 0 and from_file["scores"]["nce"] <= 0  # log-probabilities
    assert from_file["backbone"]["checkpoint"] == str(checkpoint.resolve())
    for row in rows.values():
        assert np.isfinite(row["scores"]["logme"]) and 0 <= row["scores"]["probe_acc"] <= 1
        assert not row["features_cached"]
    assert (tmp_path / "out" / "rank.png").stat().st_size > 0
    assert "LogME" in out and "from-file" in out and "n/a" in out


@pytest.mark.slow  # two rank runs: seconds on an idle 2-core machine, a minute under load
def test_a_second_rank_reads_the_features_from_the_cache(rank_cli, images, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "test_resnet.pth")
    entries = f"rank.backbones=[{{name:{TINY},checkpoint:{checkpoint}}}]"
    first, second = (
        rank_cli(*tiny_overrides(images, tmp_path / out), entries) for out in ("first", "second")
    )
    assert first[0] == second[0] == 0, first[2] + second[2]
    rows = [
        json.loads((tmp_path / out / "rank.json").read_text())["backbones"][0] for out in ("first", "second")
    ]
    assert not rows[0]["features_cached"] and rows[1]["features_cached"]
    assert rows[0]["scores"] == rows[1]["scores"] and rows[1]["source_note"] is None


@pytest.mark.parametrize("size", [(40, 32), (90, 70)])  # smaller than the preset's resize, and larger
def test_rank_embeds_the_eval_view_whichever_pipeline_holds_the_images(tmp_path, size):
    """Memory pipeline: centre crop of the decode cache's train images; streaming: the PIL eval transform of
    each file. Both must be the image as the network sees it at eval (up to interpolation rounding)."""
    images = make_image_folder(tmp_path / "images", per_split={"train": 3, "val": 2}, size=size)
    preset = Preset((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 36, 32, "bilinear")
    batches = {}
    for pipeline in ("memory", "streaming"):
        config = data_config(images, pipeline=pipeline, num_workers=0, cache_dir=None)
        datamodule = ImageDataModule(config, preset, seed=0)
        datamodule.setup()
        batches[pipeline] = torch.cat(list(rank_module.eval_batches(datamodule, 4)))
    memory, streaming = batches["memory"], batches["streaming"]
    assert memory.shape == streaming.shape == (6, 3, 32, 32)
    # Normalised units (1 = 64 grey levels here): rounding to uint8 and two resize kernels, not a shift.
    assert (memory - streaming).abs().mean() < 0.05
    assert np.corrcoef(memory.flatten(), streaming.flatten())[0, 1] > 0.99


def test_backbone_entries_take_the_command_line_backbone_keys_and_their_own():
    group = {"name": "efficientnet_lite0", "weights": "imagenet", "checkpoint": None, "in_chans_mode": "mean"}
    found = candidates(
        ["resnet18", {"name": "resnet18", "weights": None, "label": "r18 random"}], group, set()
    )
    assert [c.label for c in found] == ["resnet18", "r18 random"]
    assert found[0].backbone == {
        "name": "resnet18",
        "weights": "DEFAULT",
        "checkpoint": None,
        "in_chans_mode": "mean",
    }
    assert found[1].backbone["weights"] is None
    # backbone.weights=null on the command line: every name in the list starts from random init.
    group["weights"] = None
    assert candidates(["resnet18"], group, {"weights"})[0].backbone["weights"] is None
    assert candidates(None, group, set())[0].backbone == group  # no list: the configured backbone


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["resnet18", "resnet18"], "lists 'resnet18' twice; give one of them a label"),
        ([{"name": "resnet18", "wieghts": None}], r"rank.backbones\[0\].*unknown key 'wieghts'"),
        ("resnet18", "must be a list of backbone names or dicts"),
        ([3], r"rank.backbones\[0\]=3: give a backbone name"),
    ],
)
def test_bad_backbone_lists_are_one_line_errors(entries, message):
    group = {"name": "resnet18", "weights": "DEFAULT", "checkpoint": None, "in_chans_mode": "sum"}
    with pytest.raises(ConfigError, match=message):
        candidates(entries, group, set())


def test_unknown_backbone_is_one_line_with_suggestions(rank_cli, images, tmp_path):
    status, out, err = rank_cli(*tiny_overrides(images, tmp_path / "out"), "rank.backbones=[resnet19]")
    assert status == 1
    assert "error: rank.backbones: resnet19:" in err and "Did you mean 'resnet18'" in err
    assert "Traceback" not in err + out


def test_offline_weights_say_how_to_get_them(rank_cli, images, tmp_path, monkeypatch):
    from tlbench.models import weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    monkeypatch.setattr(weights, "_can_reach", lambda url: False)
    # Nothing is embedded before every backbone is known to load: the tiny one listed first waits.
    monkeypatch.setattr(rank_module, "embed", lambda *a: pytest.fail("embedded before the weights check"))
    entries = f"rank.backbones=[{{name:{TINY},weights:null}},resnet18]"
    status, out, err = rank_cli(*tiny_overrides(images, tmp_path / "out"), entries)
    assert status == 1 and "Traceback" not in err + out
    assert "Pretrained weights for ResNet18_Weights.IMAGENET1K_V1 are not on this machine" in err
    assert "backbone.weights=null" in err and "backbone.checkpoint=" in err


def test_too_few_images_per_class_for_cross_validation_names_the_class(rank_cli, images, tmp_path):
    args = [*tiny_overrides(images, tmp_path / "out"), f"backbone.name={TINY}", "backbone.weights=null"]
    status, _, err = rank_cli(*args, "rank.folds=11")
    assert status == 1
    assert "class 'cat' has 10 training image(s), fewer than rank.folds=11" in err


@pytest.mark.slow  # an end-to-end rank (seconds)
def test_grayscale_data_adapts_the_first_conv_as_training_does(rank_cli, images, tmp_path):
    """data.in_chans=1: the trunk's first conv is folded to one channel (backbone.in_chans_mode=sum), so the
    RGB checkpoint's classifier still reads its features: LEEP is computed, not n/a."""
    checkpoint = tiny_checkpoint(tmp_path / "test_resnet.pth")
    entries = f"rank.backbones=[{{name:{TINY},checkpoint:{checkpoint}}}]"
    status, _, err = rank_cli(*tiny_overrides(images, tmp_path / "out"), "data.in_chans=1", entries)
    assert status == 0, err
    row = json.loads((tmp_path / "out" / "rank.json").read_text())["backbones"][0]
    assert row["backbone"]["in_chans_mode"] == "sum" and row["scores"]["leep"] is not None


def test_a_random_init_is_drawn_from_the_seed_so_two_ranks_agree(images):
    from conftest import small
    from tlbench.run.checks import check_config
    from tlbench.run.train import compose_config

    runs = [check_config(compose_config([*small(images), f"seed={seed}"])) for seed in (0, 0, 1)]
    first, again, other = (rank_module.build_model(run).trunk.state_dict() for run in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_a_data_error_is_not_blamed_on_a_backbone(rank_cli, tmp_path):
    status, _, err = rank_cli("data=imagefolder", f"hydra.run.dir={tmp_path}", "rank.backbones=[resnet18]")
    assert status == 1
    assert "error: data=imagefolder needs data.root=" in err and "rank.backbones" not in err
