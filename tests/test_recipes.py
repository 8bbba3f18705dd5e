"""Recipe pieces, each one config value: it composes, trains a tiny epoch and changes what it should."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from conftest import make_image_folder, small, train_until_killed
from tlbench.models.module import TransferModule
from tlbench.results.predictions import read_predictions
from tlbench.run.checks import check_config
from tlbench.run.train import build_datamodule, build_module, compose_config, find_lr, train


@pytest.fixture
def generated(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4, "test": 4})


def quick(root: Path, *overrides: str) -> list[str]:
    return [*small(root), "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false", *overrides]


def first_batch(loader) -> torch.Tensor:
    return next(iter(loader))[0]


# ----------------------------------------------------------------------------------------- data.augment
@pytest.mark.parametrize("pipeline", ["memory", "streaming"])
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment"])
def test_a_policy_changes_train_images_and_leaves_eval_images(
    policy, in_chans, pipeline, generated, tmp_path
):
    batches = {}
    for augment in ("crop_flip", policy):
        cfg = compose_config(
            quick(
                generated, f"data.augment={augment}", f"data.pipeline={pipeline}", f"data.in_chans={in_chans}"
            )
        )
        datamodule = build_datamodule(check_config(cfg), tmp_path / augment)
        datamodule.setup()
        torch.manual_seed(0)  # the streaming path draws from torch's global generator
        batches[augment] = (
            first_batch(datamodule.train_dataloader()),
            first_batch(datamodule.val_dataloader()),
        )
    (plain_train, plain_val), (policy_train, policy_val) = batches["crop_flip"], batches[policy]
    assert policy_train.shape == plain_train.shape and policy_train.shape[1] == in_chans
    assert not torch.allclose(policy_train, plain_train)
    assert torch.equal(policy_val, plain_val)


def test_the_memory_policy_draws_the_same_images_for_the_same_seed_and_epoch(generated, tmp_path):
    cfg = compose_config(quick(generated, "data.augment=trivialaugment", "data.pipeline=memory"))
    datamodule = build_datamodule(check_config(cfg), tmp_path)
    datamodule.setup()
    assert torch.equal(first_batch(datamodule.train_dataloader()), first_batch(datamodule.train_dataloader()))


def test_an_unknown_policy_is_named_with_the_choices(generated, tmp_path):
    with pytest.raises(
        ValueError, match=r"data\.augment=.* choose one of: crop_flip, trivialaugment, randaugment"
    ):
        check_config(compose_config(quick(generated, "data.augment=autoaugment")))


# ---------------------------------------------------------------------------------------- mixup / cutmix
@pytest.mark.parametrize("mix", ["optim.mixup=0.4", "optim.cutmix=1.0"])
def test_mixing_makes_soft_targets_and_another_loss(mix, generated, tmp_path):
    cfg = compose_config(quick(generated, mix))
    datamodule = build_datamodule(check_config(cfg), tmp_path)
    module = build_module(check_config(cfg), datamodule)
    images, targets = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(1)
    mixed, soft = module.mixing(images, targets)
    assert soft.shape == (len(targets), 2) and torch.allclose(soft.sum(1), torch.ones(len(targets)))
    assert ((soft > 0.01) & (soft < 0.99)).any()  # some image is a blend of two classes
    assert not torch.equal(mixed, images)
    module.eval()
    with torch.no_grad():
        logits = module(mixed)
        assert not torch.isclose(module.training_loss(logits, soft), F.cross_entropy(logits, targets))


def test_mixup_and_cutmix_together_train_an_epoch(generated, tmp_path):
    results = train(
        compose_config(quick(generated, "optim.mixup=0.2", "optim.cutmix=1.0", "trainer.max_epochs=1")),
        tmp_path / "run",
    )
    assert results["status"] == "complete" and math.isfinite(results["metrics"]["test/loss"])


def test_mixing_turns_off_the_feature_cache_it_cannot_use(generated, tmp_path):
    cfg = compose_config(quick(generated, "strategy=freeze", "optim.mixup=0.2"))
    assert not build_module(check_config(cfg), build_datamodule(check_config(cfg), tmp_path)).caches_features
    forced = compose_config(
        quick(generated, "strategy=freeze", "optim.mixup=0.2", "strategy.cache_features=true")
    )
    with pytest.raises(ValueError, match="strategy.cache_features=false"):
        build_module(check_config(forced), build_datamodule(check_config(forced), tmp_path))


@pytest.mark.parametrize("override", ["optim.mixup=-1", "optim.cutmix=strong"])
def test_a_bad_alpha_is_named(override, generated, tmp_path):
    cfg = compose_config(quick(generated, override))
    with pytest.raises(ValueError, match=override.split("=")[0].replace(".", r"\.")):
        build_module(check_config(cfg), build_datamodule(check_config(cfg), tmp_path))


# -------------------------------------------------------------------------------------------- optim.ema
EMA_RUN = ("strategy=full", "optim.ema=0.5", "trainer.max_epochs=2", "data.batch_size=4")


def probabilities(state: dict, cfg, run_dir: Path) -> torch.Tensor:
    datamodule = build_datamodule(check_config(cfg), run_dir)
    module = build_module(check_config(cfg), datamodule)
    module.load_state_dict(state)
    module.eval()
    with torch.no_grad():
        return torch.cat([module(x).softmax(1) for x, _ in datamodule.test_dataloader()])


def test_ema_weights_are_validated_checkpointed_and_tested(generated, tmp_path):
    cfg = compose_config(quick(generated, *EMA_RUN))
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    best = torch.load(run_dir / "checkpoints/best.ckpt", weights_only=True, map_location="cpu")
    average, live = best["state_dict"], best["current_model_state"]
    assert any(not torch.equal(average[k], live[k]) for k in average if k.startswith("net."))
    tested = torch.tensor(read_predictions(run_dir).probs, dtype=torch.float32)
    assert torch.allclose(tested, probabilities(average, cfg, run_dir), atol=1e-4)
    assert not torch.allclose(tested, probabilities(live, cfg, run_dir), atol=1e-4)
    # What predict and export load is the average too.
    reloaded = TransferModule.load_from_checkpoint(run_dir / "checkpoints/best.ckpt", weights_only=True)
    assert all(torch.equal(v, average[k]) for k, v in reloaded.state_dict().items() if k in average)


def test_a_resumed_run_keeps_averaging_where_it_stopped(generated, tmp_path, monkeypatch):
    overrides = quick(generated, *EMA_RUN)
    run_dir = tmp_path / "run"
    train_until_killed(overrides, run_dir, epoch=1, monkeypatch=monkeypatch)
    train(compose_config(overrides), run_dir)
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    steps_per_epoch = 4  # 16 train images, batch 4
    # A fresh average after the restart would have counted the second epoch's steps only.
    assert int(last["averaging_state"]["n_averaged"]) == 2 * steps_per_epoch


def test_a_bad_ema_decay_is_named_before_any_data_is_read(tmp_path):
    # An empty folder: the value must be refused before any data would be read.
    cfg = compose_config(quick(tmp_path, "optim.ema=1.5"))
    with pytest.raises(ValueError, match=r"optim\.ema must be null \(off\) or a decay between 0 and 1"):
        train(cfg, tmp_path / "run")


# ------------------------------------------------------------------------------------------ early stopping
def test_early_stopping_stops_when_the_monitored_metric_cannot_improve(generated, tmp_path):
    # A frozen trunk and a head that all but stands still: validation accuracy is the same every epoch.
    overrides = ("strategy=freeze", "strategy.head_lr=1e-12", "trainer.max_epochs=5")
    run_dir = tmp_path / "run"
    results = train(
        compose_config(quick(generated, *overrides, "trainer.early_stopping_patience=1")), run_dir
    )
    assert results["stopped_early"] is True and results["epochs_trained"] == 2
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["stopped_early"] is True and saved["epochs_trained"] == 2
    full = train(compose_config(quick(generated, *overrides)), tmp_path / "full")
    assert full["stopped_early"] is False and full["epochs_trained"] == 5


@pytest.mark.parametrize("patience", ["0", "three"])
def test_a_bad_patience_is_named(patience, generated, tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.early_stopping_patience must be null \(off\)"):
        train(
            compose_config(quick(generated, f"trainer.early_stopping_patience={patience}")), tmp_path / "run"
        )


# ----------------------------------------------------------------------------------------- tune.lr_find
def test_lr_find_sweeps_the_head_rate_with_the_backbone_at_its_ratio(generated, tmp_path):
    seen: list[dict[str, float]] = []

    def record(optimizer, args, kwargs):  # after each step: the rates that step used
        seen.append({g["stage"]: g["lr"] for g in optimizer.param_groups})

    hook = register_optimizer_step_post_hook(record)
    try:
        overrides = ("strategy=partial", "strategy.head_lr=1e-2", "strategy.backbone_lr=1e-3")
        tune = ("tune.num_training=20", "tune.max_lr=0.1")
        found = find_lr(compose_config(quick(generated, *overrides, *tune)), tmp_path / "run")
    finally:
        hook.remove()
    head = found["suggestion"]["head_lr"]
    assert math.isfinite(head) and 1e-6 <= head <= 0.1
    assert found["suggestion"]["backbone_lr"] == pytest.approx(head / 10)
    assert found["override"].startswith("strategy.head_lr=")
    assert json.loads((tmp_path / "run" / "lr_find.json").read_text())["suggestion"] == found["suggestion"]
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 0
    assert len(seen) >= 13
    for rates in seen:
        assert {stage: lr / rates["head"] for stage, lr in rates.items() if stage != "head"} == pytest.approx(
            {stage: 0.1 for stage in rates if stage != "head"}
        )
    assert seen[-1]["head"] > 100 * seen[0]["head"]  # the sweep did sweep
    assert not (tmp_path / "run" / "results.json").exists()


def test_lr_find_reports_the_rates_a_scaled_strategy_trains_at(generated, tmp_path):
    """strategy.lr_scale multiplies both rates: the configured rates are the scaled ones, and the suggested
    override resets the scale, else applying it would scale the suggestion a second time."""
    overrides = (
        "strategy=partial",
        "strategy.head_lr=1e-2",
        "strategy.backbone_lr=1e-3",
        "strategy.lr_scale=3",
    )
    found = find_lr(compose_config(quick(generated, *overrides, "tune.num_training=20")), tmp_path / "run")
    assert found["configured"] == pytest.approx({"head_lr": 3e-2, "backbone_lr": 3e-3})
    assert found["suggestion"]["backbone_lr"] == pytest.approx(found["suggestion"]["head_lr"] / 10)
    assert found["override"].endswith(" strategy.lr_scale=1")


def test_lr_find_settings_are_checked(generated, tmp_path):
    with pytest.raises(ValueError, match=r"tune\.num_training must be a whole number ≥ 20"):
        find_lr(compose_config(quick(generated, "tune.num_training=5")), tmp_path / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, auto keeps the memory pipeline")
def test_auto_streams_a_policy_on_a_cpu(generated, tmp_path):
    for augment, pipeline in (("crop_flip", "memory"), ("randaugment", "streaming")):
        datamodule = build_datamodule(
            check_config(compose_config(quick(generated, f"data.augment={augment}"))), tmp_path
        )
        datamodule.setup()
        assert datamodule.pipeline.name == pipeline


def test_lr_find_must_be_true_or_false(generated):
    assert check_config(compose_config(quick(generated, "tune.lr_find=false"))).tune.lr_find is False
    with pytest.raises(ValueError, match=r"tune\.lr_find must be true or false, got 'yes'"):
        check_config(compose_config(quick(generated, "tune.lr_find=yes")))
