from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from torch import nn

from tlbench.models.optimizers import build_scheduler, parameter_groups
from tlbench.models.stages import set_batchnorm_modes, set_trainable
from tlbench.models.strategies import STRATEGIES, Strategy, StrategyError


class ToyNet(nn.Module):
    """A resnet-shaped toy: stem (conv+bn), layer1, layer2, layer10 (name-prefix trap), head."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.ModuleDict(
            {
                "conv1": nn.Conv2d(3, 4, 3),
                "bn1": nn.BatchNorm2d(4),
                "layer1": nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)),
                "layer2": nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)),
                "layer10": nn.Linear(4, 4),
            }
        )
        self.head = nn.Linear(4, 2)


STAGES = [
    ("stem", ["trunk.conv1", "trunk.bn1"]),
    ("layer1", ["trunk.layer1"]),
    ("layer2", ["trunk.layer2"]),
    ("layer10", ["trunk.layer10"]),
    ("head", ["head"]),
]


BACKBONE = ["stem", "layer1", "layer2", "layer10"]


def trainable_prefixes(net: nn.Module) -> set[str]:
    return {".".join(n.split(".")[:2]) for n, p in net.named_parameters() if p.requires_grad}


def schedule(name: str, epochs: int, **settings) -> list[list[str]]:
    strategy = Strategy.from_config({"name": name, **settings})
    return [strategy.stages_at(BACKBONE, epoch) for epoch in range(epochs)]


@pytest.mark.parametrize(
    ("strategy", "train_stages", "expected"),
    [
        ("freeze", None, ["head"]),
        ("partial", None, ["layer10", "head"]),
        ("partial", 2, ["layer2", "layer10", "head"]),
        ("partial", ["layer1"], ["layer1", "head"]),
        ("partial", "layer1", ["layer1", "head"]),
        ("full", None, ["stem", "layer1", "layer2", "layer10", "head"]),
        ("gradual", None, ["head"]),
        ("gradual", "all", ["stem", "layer1", "layer2", "layer10", "head"]),
        ("lpft", None, ["head"]),
    ],
)
def test_the_stages_that_train_first(strategy, train_stages, expected):
    assert schedule(strategy, 1, train_stages=train_stages) == [expected]


def test_set_trainable_matches_whole_names_only():
    net = ToyNet()
    set_trainable(net, STAGES, ["layer1", "head"])
    assert trainable_prefixes(net) == {"trunk.layer1", "head.weight", "head.bias"}
    assert not net.trunk["layer10"].weight.requires_grad


def test_an_adapted_input_conv_can_train_in_a_frozen_stem():
    net = ToyNet()
    set_trainable(net, STAGES, ["head"], extra=["trunk.conv1"])
    assert net.trunk["conv1"].weight.requires_grad and not net.trunk["bn1"].weight.requires_grad


@pytest.mark.parametrize(
    ("strategy", "train_stages", "message"),
    [
        ("finetune", None, "choose one of: freeze, bitfit, norm, lora, surgical, partial, gradual, lpft, "),
        ("partial", ["layer4"], "stem, layer1, layer2, layer10"),
        ("partial", 9, "0..4"),
    ],
)
def test_bad_strategy_settings_list_what_is_valid(strategy, train_stages, message):
    with pytest.raises(StrategyError, match=message):
        schedule(strategy, 1, train_stages=train_stages)


def test_settings_a_strategy_lacks_come_from_its_yaml_and_unknown_ones_are_named():
    lpft = Strategy.from_config({"name": "lpft", "head_lr": 0.5})
    assert (lpft.head_lr, lpft.probe_epochs, lpft.cache_features) == (
        0.5,
        2,
        False,
    )  # conf/strategy/lpft.yaml
    assert Strategy.from_config(None).name == "freeze"
    with pytest.raises(StrategyError, match=r"unknown strategy setting\(s\) \['lr'\]; valid: name, "):
        Strategy.from_config({"name": "full", "lr": 1.0})


def test_every_row_runs_with_only_its_required_keys_set():
    """What the config schema reads: a strategy needs its `required_keys` and no other optional key."""
    assert {n: list(r.required_keys) for n, r in STRATEGIES.items() if r.required_keys} == {
        "lora": ["lora_rank", "lora_alpha", "lora_dropout", "lora_targets"],
        "surgical": ["train_stages"],
        "gradual": ["unfreeze_every"],
        "lpft": ["lp_epochs"],
        "l2sp": ["l2sp_alpha", "l2sp_beta"],
    }
    optional = ["train_stages", "unfreeze_every", "lp_epochs", *STRATEGIES["lora"].required_keys]
    nulls = dict.fromkeys([*optional, "l2sp_alpha", "l2sp_beta"])
    for name, rule in STRATEGIES.items():
        # Each key's example value, as the error for a null one suggests it.
        examples = {key: yaml.safe_load(example) for key, example in rule.required_keys.items()}
        examples |= {"train_stages": "layer1"} if "train_stages" in examples else {}  # ToyNet's names
        strategy = Strategy.from_config({"name": name, **nulls, **examples})
        assert [strategy.stages_at(BACKBONE, epoch)[-1] for epoch in range(3)] == ["head"] * 3
        for key in rule.required_keys:
            with pytest.raises(StrategyError, match=rf"strategy={name} needs strategy.{key}, got null: e.g."):
                Strategy.from_config({"name": name, **examples, key: None})


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics():
    net = ToyNet()
    set_trainable(net, STAGES, ["layer2", "head"])
    net.train()
    set_batchnorm_modes(net, "eval")
    assert [m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [False, False, True]
    frozen_stats = net.trunk["bn1"].running_mean.clone()
    trunk = net.trunk
    x = torch.randn(4, 3, 12, 12) * 5 + 3
    trunk["layer2"](trunk["layer1"](trunk["bn1"](trunk["conv1"](x))))
    assert torch.equal(net.trunk["bn1"].running_mean, frozen_stats)
    assert net.trunk["layer2"][1].training and not net.trunk["bn1"].training


def test_parameter_groups_split_decay_and_carry_stage_rates():
    net = ToyNet()
    strategy = Strategy.from_config(
        {"name": "full", "head_lr": 1e-3, "backbone_lr": 1e-4, "layer_decay": 0.5}
    )
    rates = strategy.stage_rates(BACKBONE)
    assert rates == {"stem": 1.25e-5, "layer1": 2.5e-5, "layer2": 5e-5, "layer10": 1e-4, "head": 1e-3}
    groups = parameter_groups(net, STAGES, rates, weight_decay=0.05, include=["layer2", "head"])
    by_key = {(g["stage"], g["weight_decay"]): g for g in groups}
    assert set(by_key) == {("layer2", 0.05), ("layer2", 0.0), ("head", 0.05), ("head", 0.0)}
    assert all(p.ndim <= 1 for p in by_key[("layer2", 0.0)]["params"])
    assert by_key[("head", 0.05)]["lr"] == 1e-3 and by_key[("layer2", 0.0)]["lr"] == 5e-5


def test_cosine_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cosine = {"scheduler": "cosine", "warmup_epochs": 1}
    scheduler = build_scheduler(optimizer, cosine, total_steps=20, steps_per_epoch=5)["scheduler"]
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.2) and rates[4] == pytest.approx(1.0)
    assert rates[5] > rates[12] > rates[19] > 0
    with pytest.raises(StrategyError, match="cosine, step, none"):
        build_scheduler(optimizer, {"scheduler": "linear", "warmup_epochs": 0}, 10, 5)


def test_gradual_adds_a_stage_from_the_top_every_n_epochs_from_any_start():
    assert schedule("gradual", 5, train_stages=1, unfreeze_every=2) == [
        ["layer10", "head"],
        ["layer10", "head"],
        ["layer2", "layer10", "head"],
        ["layer2", "layer10", "head"],
        ["layer1", "layer2", "layer10", "head"],
    ]


def test_lpft_probes_the_head_for_lp_epochs_then_trains_every_stage():
    everything = ["stem", "layer1", "layer2", "layer10", "head"]
    assert schedule("lpft", 4, lp_epochs=2) == [["head"], ["head"], everything, everything]
    assert schedule("lpft", 1, lp_epochs=0) == [everything]


def test_a_probe_then_gradual_unfreezing_counts_from_the_end_of_the_probe():
    gradual = Strategy.from_config({"name": "gradual", "unfreeze_every": 1, "train_stages": 0})
    probed = dataclasses.replace(gradual, probe_epochs=2)
    assert [probed.stages_at(BACKBONE, e) for e in range(4)] == [
        ["head"],
        ["head"],
        ["head"],
        ["layer10", "head"],
    ]


@pytest.mark.parametrize(
    ("name", "max_epochs", "refused"),
    [("lpft", 2, True), ("lpft", 3, False), ("freeze", 1, False), ("gradual", 1, False)],
)
def test_a_probe_must_leave_an_epoch_to_fine_tune(name, max_epochs, refused):
    strategy = Strategy.from_config({"name": name})  # lpft.yaml: lp_epochs=2
    if refused:
        with pytest.raises(StrategyError, match="strategy.lp_epochs=2 leaves no epoch of fine-tuning"):
            strategy.check_epochs(max_epochs)
    else:
        strategy.check_epochs(max_epochs)


@pytest.mark.parametrize(
    ("name", "bn", "choice", "mixes", "expected"),
    [
        ("freeze", "eval", "auto", False, True),
        ("freeze", "eval", "auto", True, False),
        ("freeze", "eval", False, False, False),
        ("freeze", "train", "auto", False, False),
        ("lpft", "eval", "auto", False, False),
        ("partial", "eval", True, False, "needs strategy=freeze with strategy.bn=eval"),
        ("freeze", "eval", True, True, "strategy.cache_features=false"),
    ],
)
def test_features_are_cached_only_for_a_trunk_fixed_for_good(name, bn, choice, mixes, expected):
    strategy = Strategy.from_config({"name": name, "bn": bn, "cache_features": choice})
    if isinstance(expected, str):
        with pytest.raises(StrategyError, match=expected):
            strategy.caches_features(mixes_images=mixes)
    else:
        assert strategy.caches_features(mixes_images=mixes) is expected


@pytest.mark.parametrize(
    ("name", "stages", "expected"),
    [("freeze", ["head"], False), ("lpft", ["head"], False), ("lpft", ["stem", "head"], True)]
    + [("gradual", ["head"], True), ("partial", ["head"], True)],
)
def test_an_adapted_input_conv_trains_except_in_a_linear_probe(name, stages, expected):
    assert (
        Strategy.from_config({"name": name, "train_input_conv": True}).trains_input_conv(stages) is expected
    )
    assert not Strategy.from_config({"name": name, "train_input_conv": False}).trains_input_conv(stages)


def test_a_stage_made_trainable_leaves_the_eval_mode_it_had_while_frozen():
    net = ToyNet().train()
    set_trainable(net, STAGES, ["head"])
    set_batchnorm_modes(net, "eval")
    assert not net.trunk["layer2"][1].training
    set_trainable(net, STAGES, ["layer2", "head"])
    set_batchnorm_modes(net, "eval")
    assert net.trunk["layer2"][1].training and not net.trunk["layer1"][1].training
    set_batchnorm_modes(net, "train")
    assert all(m.training for m in net.modules())
