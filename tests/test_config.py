"""The config schema: every option of conf/ is a complete, valid group; the schema, not a copy, decides what
is refused; an unknown key is refused once, before anything runs; checking gives typed values."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, make_image_folder, small
from tlbench.config.schema import (
    AUGMENTS,
    DataConfig,
    OptimConfig,
    Rule,
    StrategyConfig,
    TrainerConfig,
    parse,
)
from tlbench.run.checks import ConfigError, check_config
from tlbench.run.train import compose_config, train

GROUPS = ("data", "backbone", "strategy", "optim", "trainer", "logger", "experiment")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", per_split={"train": 3, "val": 1})


def good_data() -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "imagefolder.yaml"))


def options() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((REPO / "conf" / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), options(), ids=[f"{g}={o}" for g, o in options()])
def test_every_option_of_conf_sets_every_key_and_passes(folder, group, option):
    """The YAML is the one place defaults live: each option must set every key the schema knows."""
    overrides = [o for o in small(folder) if not (group == "data" and o.startswith("data="))]
    check_config(compose_config([f"{group}={option}", *overrides]))


@pytest.mark.parametrize("key", ["data.foo", "optim.lr", "trainer.max_epoch", "foo"])
def test_an_unknown_key_is_refused_naming_it_and_the_valid_keys(folder, key):
    with pytest.raises(ConfigError) as raised:
        check_config(compose_config([*small(folder), f"+{key}=1"]))
    message = str(raised.value)
    assert f"unknown key {key};" in message and "valid keys" in message and "\n" not in message, message


def test_an_unknown_key_is_refused_once_before_any_data_is_read(folder, tmp_path, monkeypatch):
    import tlbench.run.train as train_module

    built = []
    monkeypatch.setattr(train_module, "build_datamodule", lambda *args: built.append(args))
    with pytest.raises(ConfigError, match=r"unknown key strategy\.lr; valid keys of strategy: name, "):
        train(compose_config([*small(folder), "+strategy.lr=0.1"]), tmp_path / "run")
    assert built == [] and not (tmp_path / "run").exists()


def test_a_key_the_yaml_does_not_set_is_refused_not_filled_in():
    values = good_data()
    del values["balance"]
    with pytest.raises(ConfigError, match=r"data\.balance is not set"):
        parse(DataConfig, values, "data.")


@pytest.mark.parametrize(
    ("group", "name", "override"),
    [
        (DataConfig, "batch_size", "data.batch_size=0"),
        (StrategyConfig, "head_lr", "strategy.head_lr=-0.001"),
        (OptimConfig, "name", "optim.name=adam"),
        (TrainerConfig, "monitor", "trainer.monitor=val/accuracy"),
    ],
)
def test_a_value_is_refused_by_the_schema_rule_and_passes_without_it(
    folder, monkeypatch, group, name, override
):
    """The table of tests/test_bad_input.py reads the schema: take the rule away and the value runs."""
    cfg = compose_config([*small(folder), override])
    with pytest.raises(ConfigError):
        check_config(cfg)
    spec = next(f for f in dataclasses.fields(group) if f.name == name)
    monkeypatch.setattr(spec, "metadata", types.MappingProxyType({"rule": Rule()}))
    run = check_config(cfg)
    assert str(getattr(getattr(run, override.split(".")[0]), name)) == override.split("=")[1]


def test_checking_gives_typed_frozen_values(folder):
    run = check_config(
        compose_config([*small(folder), "strategy.head_lr=1", "data.train_crop_scale=[0.5,1]"])
    )
    assert run.strategy.head_lr == 1.0 and isinstance(run.strategy.head_lr, float)
    assert run.data.train_crop_scale == (0.5, 1) and run.data.root == str(folder)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.data.batch_size = 1  # type: ignore[misc]


def test_a_message_says_what_null_means_and_gives_an_example():
    with pytest.raises(ConfigError) as raised:
        parse(DataConfig, {**good_data(), "per_class": 0}, "data.")
    assert (
        str(raised.value)
        == "data.per_class must be null (all) or a whole number ≥ 1, got 0: e.g. data.per_class=1"
    )


def test_every_declared_augment_policy_is_implemented():
    from tlbench.data.preset import AUGMENT_POLICIES

    assert set(AUGMENT_POLICIES) == set(AUGMENTS)


def test_the_schema_imports_nothing_of_the_run():
    """No import cycle: the lower modules import their choice lists from the schema, which imports none
    of them (nor torch)."""
    code = (
        "import sys, tlbench.config.schema; print(sorted(m for m in sys.modules if m.startswith('tlbench')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['tlbench', 'tlbench.config', 'tlbench.config.schema']"


def test_the_schema_names_every_strategy_of_the_strategy_table():
    """The schema is the bottom layer and lists the names; the table in models/strategies.py defines them."""
    from tlbench.config.schema import STRATEGIES as NAMES
    from tlbench.models.strategies import STRATEGIES

    assert set(NAMES) == set(STRATEGIES)
