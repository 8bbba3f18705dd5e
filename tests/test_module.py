from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY
from tlbench.models.module import TransferModule
from tlbench.models.stages import in_prefix
from tlbench.models.strategies import Strategy, StrategyError

# Every family tlbench ships a config for; random init except Lite0, whose weights come from pip.
FAMILIES = {
    "resnet18": None,
    "vgg16": None,
    "efficientnet_b0": None,
    "mobilenet_v3_large": None,
    "convnext_tiny": None,
    "vit_b_16": None,
    "efficientnet_lite0": "imagenet",
    "timm/resnet18": None,
}


def module(name="resnet18", weights=None, strategy="freeze", num_classes=3, in_chans=3, **strategy_options):
    return TransferModule(
        backbone={"name": name, "weights": weights, "checkpoint": None, "in_chans_mode": "sum"},
        num_classes=num_classes,
        in_chans=in_chans,
        strategy={"name": strategy, **strategy_options},
    )


def trained_stages(m: TransferModule) -> set[str]:
    """Which stages have parameters that train — and check no stage trains only in part."""
    stages = set()
    for stage, prefixes in m.stages:
        flags = {
            p.requires_grad for n, p in m.net.named_parameters() if any(in_prefix(n, x) for x in prefixes)
        }
        assert len(flags) == 1, f"stage {stage} trains only in part"
        if flags == {True}:
            stages.add(stage)
    return stages


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, FAMILIES[request.param]


def test_each_strategy_trains_exactly_its_stages(family):
    name, weights = family
    m = module(name, weights, "freeze")
    backbone = [s for s, _ in m.stages if s != "head"]
    expected = {
        ("freeze", None): {"head"},
        ("partial", None): {backbone[-1], "head"},
        ("partial", 2): {backbone[-2], backbone[-1], "head"},
        ("full", None): set(backbone) | {"head"},
    }
    for (strategy, k), stages in expected.items():
        m.strategy = Strategy.from_config({"name": strategy, "train_stages": k})
        m.set_trainable_stages(m.trainable_stages_at(epoch=0))
        assert trained_stages(m) == stages, (name, strategy, k)
    counts = m.parameter_counts()
    assert counts["trainable_params"] == counts["total_params"]


def test_gradual_unfreezes_one_stage_from_the_top_every_n_epochs():
    m = module("resnet18", strategy="gradual", unfreeze_every=2)
    assert m.trainable_stages_at(0) == ["head"]
    assert m.trainable_stages_at(1) == ["head"]
    assert m.trainable_stages_at(2) == ["layer4", "head"]
    assert m.trainable_stages_at(5) == ["layer3", "layer4", "head"]
    assert m.trainable_stages_at(100) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def test_grayscale_resnet18_has_a_one_channel_conv1_that_trains():
    m = module("resnet18", strategy="partial", in_chans=1)
    conv1 = m.net.trunk.conv1
    assert conv1.in_channels == 1 and conv1.weight.requires_grad
    assert not m.net.trunk.bn1.weight.requires_grad
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_unknown_strategy_setting_is_named():
    with pytest.raises(StrategyError, match="unknown strategy setting"):
        module(strategy="freeze", lr=1.0)


def tiny_loader(num_classes=3, n=12, size=32):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.arange(n) % num_classes
    return DataLoader(TensorDataset(images, labels), batch_size=4)


def fit(m: TransferModule, tmp_path, epochs=1) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(m, tiny_loader(), tiny_loader())
    return trainer


def test_frozen_batchnorm_keeps_its_statistics_through_training(tmp_path):
    m = module("resnet18", strategy="partial")
    frozen_before = m.net.trunk.bn1.running_mean.clone()
    trained_before = m.net.trunk.layer4[1].bn2.running_mean.clone()
    fit(m, tmp_path)
    assert torch.equal(m.net.trunk.bn1.running_mean, frozen_before)
    assert not torch.equal(m.net.trunk.layer4[1].bn2.running_mean, trained_before)


def test_bn_train_policy_lets_frozen_statistics_move(tmp_path):
    m = module("resnet18", strategy="freeze", bn="train")
    before = m.net.trunk.bn1.running_mean.clone()
    fit(m, tmp_path)
    assert not torch.equal(m.net.trunk.bn1.running_mean, before)


def test_only_trainable_parameters_change(tmp_path):
    m = module("resnet18", strategy="partial")
    frozen = m.net.trunk.layer3[0].conv1.weight.clone()
    trained = m.net.trunk.layer4[0].conv1.weight.clone()
    fit(m, tmp_path)
    assert torch.equal(m.net.trunk.layer3[0].conv1.weight, frozen)
    assert not torch.equal(m.net.trunk.layer4[0].conv1.weight, trained)


def test_gradual_training_adds_stages_as_epochs_pass(tmp_path):
    m = module("resnet18", strategy="gradual", unfreeze_every=1)
    layer4 = m.net.trunk.layer4[0].conv1.weight.clone()
    layer2 = m.net.trunk.layer2[0].conv1.weight.clone()
    fit(m, tmp_path, epochs=2)
    assert m.trainable_stages == ["layer4", "head"]
    assert not torch.equal(m.net.trunk.layer4[0].conv1.weight, layer4)
    assert torch.equal(m.net.trunk.layer2[0].conv1.weight, layer2)


def test_checkpoint_reloads_without_hydra_or_downloads(tmp_path):
    m = module("efficientnet_lite0", weights="imagenet", strategy="partial", num_classes=3)
    trainer = fit(m, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = TransferModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert reloaded.hparams.backbone["weights"] is None
    x = torch.randn(2, 3, 64, 64)
    m.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), reloaded(x), atol=1e-6)
    assert reloaded.trainable_stages == m.trainable_stages


# Hyper-parameters as checkpoints hold them: whole YAML groups (train.build_module), or a partial dict.
SAVED_STRATEGIES = [
    {
        "name": "lpft", "train_stages": 0, "bn": "eval", "head_lr": 0.001, "backbone_lr": 0.0001,
        "layer_decay": None, "unfreeze_every": None, "lp_epochs": 2, "train_input_conv": True,
        "cache_features": False,
    },
    {"name": "partial", "train_stages": 2},
]  # fmt: skip
SAVED_OPTIM = {
    "name": "adamw", "weight_decay": 0.0001, "momentum": 0.9, "scheduler": "cosine", "warmup_epochs": 0.0,
    "step_epochs": 7, "gamma": 0.1, "label_smoothing": 0.0, "cuda_graph": "auto", "mixup": 0.0, "cutmix": 0.0,
    "ema": None,
}  # fmt: skip


@pytest.mark.parametrize("strategy", SAVED_STRATEGIES, ids=lambda s: s["name"])
def test_a_checkpoint_in_the_saved_layout_reloads_and_predicts_alike(tmp_path, strategy):
    torch.manual_seed(0)
    saved = module("resnet18", strategy=strategy["name"], num_classes=2)
    hparams = {
        "backbone": {"name": "resnet18", "weights": None, "checkpoint": None, "in_chans_mode": "sum"},
        "num_classes": 2, "in_chans": 3, "strategy": strategy, "optim": SAVED_OPTIM, "class_names": None,
        "positive_class": 1, "preset": None, "class_weights": None, "threshold_rule": "youden",
        "threshold": 0.52,
    }  # fmt: skip
    path = tmp_path / "saved.ckpt"
    checkpoint = {"state_dict": saved.state_dict(), "hyper_parameters": hparams}
    torch.save({**checkpoint, "pytorch-lightning_version": L.__version__}, path)
    reloaded = TransferModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert reloaded.strategy.name == strategy["name"] and reloaded.threshold == 0.52
    x = torch.randn(2, 3, 48, 48)
    saved.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.equal(saved(x), reloaded(x))


def test_binary_tasks_report_auroc_sensitivity_specificity(tmp_path):
    m = module("resnet18", strategy="freeze", num_classes=2)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    tested = trainer.test(m, tiny_loader(num_classes=2), verbose=False)[0]
    for key in ("test/acc", "test/f1_macro", "test/auroc", "test/sensitivity", "test/specificity"):
        assert 0.0 <= tested[key] <= 1.0, key
    assert set(m.test_per_class_result) == {"0", "1"}


def test_top5_appears_from_ten_classes():
    assert not any("top5" in k for k in module(num_classes=3).val_metrics.keys())
    assert any("top5" in k for k in module(num_classes=10).val_metrics.keys())


def batchnorm_modes(m: TransferModule) -> dict[str, bool]:
    return {n: x.training for n, x in m.net.named_modules() if isinstance(x, torch.nn.BatchNorm2d)}


def test_a_stage_gradual_unfreezes_has_its_batchnorm_in_train_mode_as_under_partial(tmp_path):
    m = module("resnet18", strategy="gradual", unfreeze_every=1)
    fit(m, tmp_path, epochs=2)  # epoch 1 unfreezes layer4
    m.train()  # as during the epoch (Lightning leaves fit with the mode training had)
    partial = module("resnet18", strategy="partial", train_stages=["layer4"]).train()
    assert m.trainable_stages == partial.trainable_stages == ["layer4", "head"]
    assert batchnorm_modes(m) == batchnorm_modes(partial)
    assert m.net.trunk.layer4[0].bn1.training and not m.net.trunk.layer3[0].bn1.training


class TrainingState(L.Callback):
    """What trains in each epoch, seen from its first batch (after every epoch-start hook); stops the run
    after `stop_after` epochs, as a kill would (max_epochs, and with it the LR schedule, unchanged)."""

    def __init__(self, stop_after: int | None = None):
        self.epochs: dict[int, tuple] = {}
        self.stop_after = stop_after

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.stop_after:
            trainer.should_stop = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            grads = tuple(n for n, p in pl_module.net.named_parameters() if p.requires_grad)
            self.epochs[trainer.current_epoch] = (
                list(pl_module.trainable_stages),
                grads,
                batchnorm_modes(pl_module),
            )


def fit_with_checkpoints(m, tmp_path, epochs=5, resume=None, stop_after=None) -> TrainingState:
    state = TrainingState(stop_after)
    latest = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[state, latest], deterministic=True,
    )  # fmt: skip
    trainer.fit(m, tiny_loader(), tiny_loader(), ckpt_path=resume, weights_only=True)
    return state


@pytest.mark.parametrize(
    ("strategy", "options", "stop_after"),
    [
        ("gradual", {"unfreeze_every": 2}, 3),
        ("gradual", {"unfreeze_every": 2}, 2),
        ("lpft", {"lp_epochs": 2}, 2),
    ],
)
def test_a_resumed_schedule_trains_what_the_uninterrupted_run_trained(
    tmp_path, strategy, options, stop_after
):
    """Stopped after `stop_after` epochs and resumed from last.ckpt: the same stages, gradients, BatchNorm
    modes each epoch, and the same weights at the end (gradual, unfreeze_every=2, came back head-only)."""
    torch.manual_seed(0)
    whole = module(TINY, strategy=strategy, **options)
    whole_state = fit_with_checkpoints(whole, tmp_path / "whole")

    torch.manual_seed(0)
    cut = module(TINY, strategy=strategy, **options)
    fit_with_checkpoints(cut, tmp_path / "cut", stop_after=stop_after)
    resumed = module(TINY, strategy=strategy, **options)
    resumed_state = fit_with_checkpoints(resumed, tmp_path / "cut", resume=tmp_path / "cut" / "last.ckpt")

    for epoch in range(stop_after, 5):
        assert resumed_state.epochs[epoch] == whole_state.epochs[epoch], epoch
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), (name, (a.float() - b.float()).abs().max())


class Snapshots(L.Callback):
    """Copies of the head and a trunk stage at the first batch of each epoch and at each epoch's end."""

    def __init__(self):
        self.start: dict[int, dict] = {}
        self.end: dict[int, dict] = {}

    @staticmethod
    def take(pl_module) -> dict:
        trunk = pl_module.net.trunk
        return {
            "head": pl_module.net.head.weight.detach().clone(),
            "conv": trunk.layer1[0].conv1.weight.detach().clone(),
            "bn_mean": trunk.bn1.running_mean.clone(),
            "stages": list(pl_module.trainable_stages),
            "bn_training": trunk.bn1.training,
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.start[trainer.current_epoch] = self.take(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.end[trainer.current_epoch] = self.take(pl_module)


def test_lpft_probes_with_the_trunk_fixed_then_fine_tunes_everything_from_that_head(tmp_path):
    m = module("resnet18", strategy="lpft", lp_epochs=2)
    initial = Snapshots.take(m)
    seen = Snapshots()
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, callbacks=[seen], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(m, tiny_loader(), tiny_loader())
    everything = [s for s, _ in m.stages]
    assert [seen.start[e]["stages"] for e in range(3)] == [["head"], ["head"], everything]
    # The probe: the head learns, the trunk (weights and frozen BatchNorm statistics) stays as it was.
    assert not torch.equal(seen.end[1]["head"], initial["head"])
    assert torch.equal(seen.end[1]["conv"], initial["conv"]) and not seen.start[1]["bn_training"]
    assert torch.equal(seen.end[1]["bn_mean"], initial["bn_mean"])
    # Fine-tuning starts from the probe's head, and now moves the trunk with BatchNorm in train mode.
    assert torch.equal(seen.start[2]["head"], seen.end[1]["head"])
    assert seen.start[2]["bn_training"] and not torch.equal(seen.end[2]["conv"], initial["conv"])
    assert not torch.equal(seen.end[2]["bn_mean"], initial["bn_mean"])


def test_lpft_needs_an_epoch_left_to_fine_tune(tmp_path):
    with pytest.raises(StrategyError, match="strategy.lp_epochs=2 leaves no epoch of fine-tuning"):
        fit(module("resnet18", strategy="lpft", lp_epochs=2), tmp_path, epochs=2)
