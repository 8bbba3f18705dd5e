from __future__ import annotations

import pytest
import torch
from torch import nn

from tlbench.models.strategies import (
    StrategyError,
    build_scheduler,
    initial_trainable_stages,
    parameter_groups,
    set_batchnorm_modes,
    set_trainable,
    stage_learning_rates,
    trainable_stages_at,
)


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


def trainable_prefixes(net: nn.Module) -> set[str]:
    return {".".join(n.split(".")[:2]) for n, p in net.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("strategy", "train_stages", "expected"),
    [
        ("freeze", None, ["head"]),
        ("partial", None, ["layer10", "head"]),
        ("partial", 2, ["layer2", "layer10", "head"]),
        ("partial", ["layer1"], ["layer1", "head"]),
        ("full", None, ["stem", "layer1", "layer2", "layer10", "head"]),
        ("gradual", None, ["head"]),
        ("lpft", None, ["head"]),
    ],
)
def test_initial_trainable_stages(strategy, train_stages, expected):
    assert initial_trainable_stages(STAGES, strategy, train_stages) == expected


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
        ("finetune", None, "choose one of: freeze, partial, full, gradual, lpft"),
        ("partial", ["layer4"], "stem, layer1, layer2, layer10"),
        ("partial", 9, "0..4"),
    ],
)
def test_bad_strategy_settings_list_what_is_valid(strategy, train_stages, message):
    with pytest.raises(StrategyError, match=message):
        initial_trainable_stages(STAGES, strategy, train_stages)


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
    rates = stage_learning_rates(STAGES, head_lr=1e-3, backbone_lr=1e-4, layer_decay=0.5)
    assert rates == {"stem": 1.25e-5, "layer1": 2.5e-5, "layer2": 5e-5, "layer10": 1e-4, "head": 1e-3}
    groups = parameter_groups(net, STAGES, rates, weight_decay=0.05, include=["layer2", "head"])
    by_key = {(g["stage"], g["weight_decay"]): g for g in groups}
    assert set(by_key) == {("layer2", 0.05), ("layer2", 0.0), ("head", 0.05), ("head", 0.0)}
    assert all(p.ndim <= 1 for p in by_key[("layer2", 0.0)]["params"])
    assert by_key[("head", 0.05)]["lr"] == 1e-3 and by_key[("layer2", 0.0)]["lr"] == 5e-5


def test_cosine_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, "cosine", total_steps=20, steps_per_epoch=5, warmup_epochs=1)[
        "scheduler"
    ]
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.2) and rates[4] == pytest.approx(1.0)
    assert rates[5] > rates[12] > rates[19] > 0
    with pytest.raises(StrategyError, match="cosine, step, none"):
        build_scheduler(optimizer, "linear", 10, 5)


def schedule(name: str, epochs: int, **settings) -> list[list[str]]:
    return [trainable_stages_at(STAGES, {"name": name, **settings}, epoch) for epoch in range(epochs)]


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


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("gradual", {"unfreeze_every": 0}, "strategy.unfreeze_every must be a whole number ≥ 1, got 0"),
        ("gradual", {"unfreeze_every": 1.5}, "strategy.unfreeze_every must be a whole number"),
        ("lpft", {"lp_epochs": None}, "strategy.lp_epochs must be a whole number ≥ 0, got None"),
        ("lpft", {"lp_epochs": -1}, "strategy.lp_epochs must be a whole number ≥ 0"),
    ],
)
def test_bad_schedules_are_named(name, settings, message):
    with pytest.raises(StrategyError, match=message):
        trainable_stages_at(STAGES, {"name": name, **settings}, 0)


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
