"""What trains is said, and what cannot work is warned: a frozen trunk with random weights (issue 18.5), the
adapted 1-channel input conv that trains outside the named stages, and other code's stage names such as
`conv1` / `fc` mapped to ours (18.8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, make_image_folder, small
from tlbench.models.module import TransferModule
from tlbench.models.stages import describe_trainable
from tlbench.models.strategies import STRATEGIES, Strategy, StrategyError
from tlbench.run.checks import check_config, frozen_random_stages
from tlbench.run.train import compose_config

BACKBONE = ["stem", "stage1", "stage2", "stage3", "stage4"]  # TINY's stages, stem to top


@pytest.fixture
def images(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_split={"train": 4, "val": 2})


def frozen_and_warning(images: Path, *overrides: str) -> tuple[list[str], str]:
    run = check_config(compose_config([*small(images), "trainer.max_epochs=10", *overrides]))
    return frozen_random_stages(run, Strategy.from_config({"name": run.strategy.name}), BACKBONE)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_that_freezes_random_stages_warns(images, strategy):
    frozen, warning = frozen_and_warning(images, f"strategy={strategy}")
    trained_at_start = Strategy.from_config({"name": strategy}).stages_at(BACKBONE, 0)
    selective = Strategy.from_config({"name": strategy}).parameters != "all"  # bitfit, norm, lora
    assert frozen == [stage for stage in BACKBONE if stage not in trained_at_start or selective]
    pulls_to_start = Strategy.from_config({"name": strategy}).l2sp is not None
    assert bool(warning) == (bool(frozen) or pulls_to_start)
    # the table: every strategy but full and l2sp freezes a part (or all but a selection) at first
    assert (strategy in ("full", "l2sp")) == (not frozen)
    if pulls_to_start:
        assert "random" in warning and "backbone.checkpoint=" in warning and "\n" not in warning
        return
    if warning:
        assert "\n" not in warning and f"strategy={strategy}" in warning and "randomly initialised" in warning
        assert "backbone.checkpoint=" in warning and "strategy=full" in warning
        assert ", ".join(frozen) in warning
        # freeze and partial keep them frozen; gradual and lpft unfreeze them later
        unfrozen_later = not selective and Strategy.from_config({"name": strategy}).stages_at(
            BACKBONE, 9
        ) != (trained_at_start)
        assert ("start frozen" if unfrozen_later else "stay frozen") in warning


def test_pretrained_or_checkpoint_weights_do_not_warn(images, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")  # check_config only checks that the file exists
    assert frozen_and_warning(images, "strategy=freeze", f"backbone.checkpoint={weights}") == ([], "")
    assert frozen_and_warning(images, "strategy=freeze", "backbone.weights=DEFAULT") == ([], "")


def run_once(cli, images: Path, run_dir: Path, *overrides: str):
    ran = cli(
        *small(images), "trainer.fast_dev_run=true", "logger=none", f"hydra.run.dir={run_dir}", *overrides
    )
    assert ran.returncode == 0, ran.stderr
    return ran, json.loads((run_dir / "results.json").read_text())


def test_a_run_on_a_frozen_random_trunk_warns_at_start_and_records_it(cli, images, tmp_path):
    ran, results = run_once(cli, images, tmp_path / "run", "strategy=freeze")
    lines = ran.stdout.splitlines()
    warning = next(line for line in lines if "randomly initialised" in line)
    assert "stem, stage1, stage2, stage3, stage4 stay frozen" in warning
    # at the start: right after the line saying what trains, before the trainer is built
    assert "parameters train" in lines[lines.index(warning) - 1]
    assert results["frozen_random_stages"] == BACKBONE


def test_the_trained_input_conv_is_in_the_log_and_results(cli, images, tmp_path, finished_run):
    ran, results = run_once(cli, images, tmp_path / "gray", "strategy=partial", "data.in_chans=1")
    # TINY's stem is deep: its first conv is conv1.0, inside stage stem, which does not train
    assert "(stages: stage4, head + input conv conv1.0 (adapted to 1 channel))" in ran.stdout
    assert results["trainable_stages"] == ["stage4", "head"] and results["trained_input_conv"] == ["conv1.0"]
    assert finished_run.results["trained_input_conv"] == []  # RGB: nothing adapted


def test_describe_trainable_names_each_extra_prefix_without_the_trunk():
    assert describe_trainable(["layer4", "head"], []) == "layer4, head"
    assert (
        describe_trainable(["head"], ["trunk.conv_stem"])
        == "head + input conv conv_stem (adapted to 1 channel)"
    )


def build(name: str, stages: list[str], in_chans: int = 3) -> TransferModule:
    return TransferModule(
        backbone={"name": name, "weights": None},
        num_classes=2,
        in_chans=in_chans,
        strategy={"name": "partial", "train_stages": stages},
    )


@pytest.mark.parametrize(
    "name, asked, says, use",
    [
        # seed 000: torchvision's resnet names, with the 1-channel conv1 it adapted
        (
            "resnet18",
            ["conv1", "layer3", "layer4", "fc"],
            [
                "conv1 is part of stage stem (the 1-channel input conv conv1 trains anyway",
                "fc is the classifier, here `head`",
            ],
            "[stem,layer3,layer4]",
        ),
        # timm's names (Lite0): conv_stem, blocks.6, classifier
        (
            "efficientnet_lite0",
            ["conv_stem", "blocks.6", "classifier"],
            [
                "conv_stem is part of stage stem",
                "blocks.6 is part of stage stage7",
                "classifier is the classifier",
            ],
            "[stem,stage7]",
        ),
        # a container spans several stages; `stem` where the backbone has none maps to its first stage
        (
            TINY,
            ["stem", "layer4", "trunk.layer3"],
            ["layer4 is part of stage stage4", "trunk.layer3 is part of stage stage3"],
            "[stem,stage3,stage4]",
        ),
        (
            "efficientnet_b0",
            ["stem", "features"],
            ["stem is part of stage features.0", "features is part of stage features.0, features.1"],
            None,
        ),
        ("resnet18", ["block9"], ["block9 is no part of this backbone"], None),
    ],
)
def test_other_codes_stage_names_are_mapped_to_ours(name, asked, says, use):
    with pytest.raises(StrategyError) as error:
        build(name, asked, in_chans=1 if name == "resnet18" else 3)
    message = str(error.value)
    assert "\n" not in message and "then head (always trained)" in message
    for phrase in says:
        assert phrase in message
    if use:
        assert f"Use strategy.train_stages={use}." in message


def test_the_mapped_override_is_accepted(images):
    module = build("resnet18", ["stem", "layer3", "layer4"], in_chans=1)
    assert module.trainable_stages == ["stem", "layer3", "layer4", "head"]
