"""The strategies that train one kind of parameter in every stage (bitfit, norm, lora), one named stage
(surgical), or everything under a penalty (l2sp): what each trains, what a task stores, that training
touches nothing else, and that a LoRA checkpoint serves as the plain network."""

from __future__ import annotations

import sys

import lightning as L
import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY, make_image_folder, small
from tlbench.models.module import TransferModule
from tlbench.models.peft_lora import LoraAdapters, lora_targets
from tlbench.models.penalties import L2SPPenalty
from tlbench.models.selection import selected_parameters
from tlbench.models.strategies import L2SP, Lora, Strategy, StrategyError

LORA = Lora(rank=4, alpha=8.0, dropout=0.0, targets=("conv", "linear"))


def build(strategy: str, name: str = TINY, num_classes: int = 3, **options) -> TransferModule:
    return TransferModule(
        backbone={"name": name, "weights": None},
        num_classes=num_classes,
        strategy={"name": strategy, **options},
    )


def trainable(m: TransferModule) -> set[str]:
    return {n for n, p in m.net.named_parameters() if p.requires_grad}


def backbone_params(m: TransferModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.net.named_parameters() if not n.startswith("head.")}


def loader(n: int = 12, size: int = 32, num_classes: int = 3) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=generator)
    return DataLoader(TensorDataset(images, torch.arange(n) % num_classes), batch_size=4)


def fit(m: TransferModule, tmp_path, epochs: int = 1, **options) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0, enable_model_summary=False,
        **{"enable_checkpointing": False, **options},
    )  # fmt: skip
    trainer.fit(m, loader(), loader())
    return trainer


# ------------------------------------------------------------------------------------- which parameters
class Attention(nn.Module):
    """torchvision's ViT block in small: torch's MultiheadAttention (in_proj_bias, out_proj), a LayerNorm,
    a GroupNorm and a depthwise conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8)
        self.group_norm = nn.GroupNorm(2, 8)
        self.attention = nn.MultiheadAttention(8, 2)
        self.ln = nn.LayerNorm(8)
        self.mlp = nn.Linear(8, 8)


def test_parameter_roles_are_found_by_module_type_and_name_in_any_network():
    net = Attention()
    assert selected_parameters(net, "biases") == {
        "conv.bias", "depthwise.bias", "group_norm.bias", "attention.in_proj_bias",
        "attention.out_proj.bias", "ln.bias", "mlp.bias",
    }  # fmt: skip
    assert selected_parameters(net, "norms") == {
        "group_norm.weight",
        "group_norm.bias",
        "ln.weight",
        "ln.bias",
    }
    assert selected_parameters(net, "all") is None


def test_lora_adapts_conv_and_linear_layers_but_not_depthwise_convs_or_attention_internals():
    net = Attention()
    assert lora_targets(net, ("conv", "linear")) == ["conv", "mlp"]
    assert lora_targets(net, ("linear",)) == ["mlp"]


@pytest.mark.parametrize("name", [TINY, "timm/test_vit"])
def test_bitfit_trains_every_bias_and_the_head_and_nothing_else(name):
    m = build("bitfit", name)
    biases = {n for n, _ in m.net.named_parameters() if n.rsplit(".", 1)[-1] == "bias"}
    assert trainable(m) == biases | {"head.weight", "head.bias"}
    assert any(not n.startswith("head.") for n in biases)


@pytest.mark.parametrize(("name", "norm_type"), [(TINY, nn.BatchNorm2d), ("timm/test_vit", nn.LayerNorm)])
def test_norm_trains_the_normalisation_layers_and_the_head_and_nothing_else(name, norm_type):
    m = build("norm", name)
    norms = {
        f"{module_name}.{n}"
        for module_name, module in m.net.named_modules()
        if isinstance(module, norm_type)
        for n, _ in module.named_parameters(recurse=False)
    }
    assert norms and trainable(m) == norms | {"head.weight", "head.bias"}


@pytest.mark.parametrize("strategy", ["bitfit", "norm", "lora"])
def test_training_changes_only_the_selected_parameters(strategy, tmp_path):
    m = build(strategy)
    before = backbone_params(m)
    fit(m, tmp_path)
    after = backbone_params(m)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    selected = {n for n in trainable(m) if not n.startswith("head.")}
    assert changed and changed <= selected
    # The optimizer holds only what may train: no state for a frozen weight.
    optimized = {id(p) for group in m.trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in m.net.parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize(
    "name",
    [TINY, "resnet18", "timm/test_vit"]
    # torch's MultiheadAttention (out_proj left alone); timm's Conv2dSame ('same' padding) and depthwise convs
    + [pytest.param(name, marks=pytest.mark.slow) for name in ("vit_b_16", "efficientnet_lite0")],
)
def test_lora_trains_adapters_and_head_and_merges_into_the_plain_network(name, tmp_path):
    m = build("lora", name, lora_rank=4, lora_alpha=8, lora_targets=["conv", "linear"])
    assert trainable(m) == {n for n, _ in m.net.named_parameters() if "lora_" in n} | {
        "head.weight",
        "head.bias",
    }
    size = 224 if name == "vit_b_16" else 32  # torchvision's ViT takes its own size only
    with torch.no_grad():  # B starts at 0, which would leave nothing to merge
        for n, p in m.net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    images = torch.randn(2, 3, size, size)
    m.eval()
    with torch.no_grad():
        adapted = m(images)
    m.merge_adapters()
    plain = build("freeze", name)
    assert m.net.state_dict().keys() == plain.net.state_dict().keys()  # serve/ loads it as any network
    assert not any(type(module).__module__.startswith("peft") for module in m.net.modules())
    with torch.no_grad():
        torch.testing.assert_close(m(images), adapted, atol=1e-4, rtol=1e-4)


def test_a_lora_checkpoint_predicts_exports_and_explains_as_the_plain_network(tmp_path):
    from tlbench.serve.cam import grad_cam, target_layer
    from tlbench.serve.export import export, load_checkpoint

    m = build("lora", lora_rank=4)
    with torch.no_grad():  # as if trained: B starts at 0, which would leave nothing to merge
        for n, p in m.net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    trainer = L.Trainer(accelerator="cpu", logger=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(m)
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    size = m.preset.crop_size  # what the export's input is fixed to
    images = torch.randn(2, 3, size, size)
    m.eval()
    with torch.no_grad():
        expected = m(images)
    served = load_checkpoint(path)
    assert not any(type(module).__module__.startswith("peft") for module in served.net.modules())
    with torch.no_grad():
        torch.testing.assert_close(served.net(images), expected, atol=1e-4, rtol=1e-4)
    model_file, _ = export(path, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    name, layer = target_layer(served.net, served.stages, (3, size, size))
    assert name == "trunk.layer4" and grad_cam(served.net, images, layer).shape == (2, size, size)


def test_lora_without_peft_is_refused_in_one_line_naming_the_pip_command(monkeypatch, image_folder):
    from tlbench.config.schema import ConfigError
    from tlbench.run.checks import check_config
    from tlbench.run.train import compose_config

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails as if it were not installed
    with pytest.raises(
        ConfigError, match=r"^strategy=lora needs the peft package: pip install peft"
    ) as raised:
        check_config(compose_config([*small(image_folder), "strategy=lora"]))
    assert "\n" not in str(raised.value)
    with pytest.raises(ImportError, match=r"pip install peft \(or pip install 'tlbench\[lora\]'\)"):
        LoraAdapters(nn.Sequential(nn.Linear(2, 2)), LORA)


# --------------------------------------------------------------------------------- what a task stores
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
@pytest.mark.parametrize("strategy", ["bitfit", "lora"])
def test_bitfit_and_lora_store_at_most_five_percent_of_a_real_backbone_per_task(name, strategy):
    m = build(strategy, name, num_classes=10)
    backbone = sum(p.numel() for n, p in m.net.trunk.named_parameters() if "lora_" not in n)
    stored = m.parameter_counts()["stored_params_per_task"]
    assert 0 < stored <= 0.05 * backbone, (stored, backbone)


def test_full_fine_tuning_stores_the_whole_network_with_its_batchnorm_statistics():
    m = build("full", "resnet18")
    counts = m.parameter_counts()
    statistics = sum(b.numel() for n, b in m.net.named_buffers() if "running_" in n)
    assert counts["stored_params_per_task"] == counts["total_params"] + statistics
    frozen = build("freeze", "resnet18").parameter_counts()
    assert frozen["stored_params_per_task"] == frozen["trainable_params"] == 512 * 3 + 3


# ---------------------------------------------------------------------------------------------- surgical
def test_surgical_trains_one_named_stage_and_the_head():
    m = build("surgical", train_stages="stage2")
    assert m.trainable_stages == ["stage2", "head"]
    stage2 = dict(m.stages)["stage2"]
    assert {n.split(".")[0] for n in trainable(m)} == {"trunk", "head"}
    assert all(n.startswith("head.") or any(n.startswith(p + ".") for p in stage2) for n in trainable(m))


@pytest.mark.parametrize(
    ("train_stages", "message"),
    [
        (
            "layer1",
            r"strategy.train_stages names layer1, which this backbone does not have"
            r".*Its stages, stem to top: stem, stage1, stage2",
        ),
        (["stage1", "stage2"], r"strategy=surgical trains one named stage \+ the head"),
        (2, r"strategy=surgical trains one named stage"),
    ],
)
def test_surgical_refuses_anything_but_one_stage_of_the_backbone_in_one_line(train_stages, message):
    with pytest.raises(StrategyError, match=message) as raised:
        build("surgical", train_stages=train_stages)
    assert "\n" not in str(raised.value)


# ----------------------------------------------------------------------------------------------- L2-SP
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(2, 2)
        self.head = nn.Linear(2, 3)


SMALL_STAGES = [("body", ["trunk"]), ("head", ["head"])]


def test_the_l2sp_penalty_is_the_papers_formula_with_its_gradient():
    net = Small()
    penalty = L2SPPenalty(net, SMALL_STAGES, L2SP(alpha=0.1, beta=0.01))
    with torch.no_grad():
        net.trunk.weight += 0.5  # w - w0 = 0.5 on 4 weights, 0 on the bias
        net.head.weight.fill_(1.0)
        net.head.bias.fill_(2.0)
    value = penalty(net)
    # alpha/2 * (4 * 0.25) + beta/2 * (6 * 1 + 3 * 4)
    assert value.item() == pytest.approx(0.1 / 2 * 1.0 + 0.01 / 2 * 18.0)
    value.backward()
    torch.testing.assert_close(net.trunk.weight.grad, torch.full((2, 2), 0.1 * 0.5))
    torch.testing.assert_close(net.trunk.bias.grad, torch.zeros(2))
    torch.testing.assert_close(net.head.weight.grad, torch.full((3, 2), 0.01 * 1.0))
    torch.testing.assert_close(net.head.bias.grad, torch.full((3,), 0.01 * 2.0))


def test_l2sp_adds_its_penalty_to_the_loss_and_replaces_weight_decay(tmp_path):
    m = build("l2sp", l2sp_alpha=0.5, l2sp_beta=0.0)
    m.optim["weight_decay"] = 0.05
    w0 = backbone_params(m)
    trainer = fit(m, tmp_path)
    assert all(group["weight_decay"] == 0.0 for group in trainer.optimizers[0].param_groups)
    drift = sum((p.detach() - w0[n]).pow(2).sum() for n, p in m.net.named_parameters() if n in w0)
    assert drift > 0
    # The epoch's mean penalty lies between 0 and the penalty after the last step.
    assert 0 < trainer.callback_metrics["train/penalty"] <= 0.5 / 2 * drift + 1e-6


@pytest.mark.slow  # three fits (~15 s on a loaded 2-core machine)
def test_a_resume_with_other_starting_weights_is_refused(tmp_path):
    torch.manual_seed(0)
    trainer = fit(build("l2sp"), tmp_path, limit_train_batches=1, limit_val_batches=1)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)

    def resume(m: TransferModule) -> L.Trainer:
        again = L.Trainer(
            max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
            default_root_dir=tmp_path, num_sanity_val_steps=0, enable_model_summary=False,
            enable_checkpointing=False, limit_train_batches=1, limit_val_batches=1,
        )  # fmt: skip
        again.fit(m, loader(), loader(), ckpt_path=path, weights_only=True)
        return again

    torch.manual_seed(1)  # another random init: another w0
    with pytest.raises(ValueError, match="starting weights .* differ from those this run started from"):
        resume(build("l2sp"))
    torch.manual_seed(0)  # the same w0: it goes on
    assert resume(build("l2sp")).current_epoch == 2


def test_strategy_values_reach_the_strategy():
    lora = Strategy.from_config({"name": "lora", "lora_rank": 2, "lora_targets": "linear"})
    assert (
        lora.lora == Lora(rank=2, alpha=8.0, dropout=0.0, targets=("linear",))
        and lora.parameters == "adapters"
    )
    assert Strategy.from_config({"name": "l2sp", "l2sp_beta": 0.5}).l2sp == L2SP(alpha=0.1, beta=0.5)
    assert Strategy.from_config({"name": "bitfit"}).start == "all"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["bitfit", "norm", "lora", "surgical", "l2sp"])
def test_each_new_strategy_runs_reports_predicts_and_exports(strategy, tmp_path):
    """Through `tlbench.train` as a user runs it: results.json reports it like any other strategy."""
    from tlbench.run.train import compose_config, train
    from tlbench.serve.export import export
    from tlbench.serve.predict import load_model, predict_each

    images = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    overrides = [*small(images), "logger=none", "trainer.max_epochs=2", f"strategy={strategy}"]
    results = train(compose_config([*overrides, "trainer.enable_progress_bar=false"]), tmp_path / "run")
    assert results["params"]["strategy"] == strategy
    for key in ("trainable_params", "stored_params_per_task", "wall_time_s", "peak_memory_mb"):
        assert results[key] > 0, key
    checkpoint = tmp_path / "run" / results["best_checkpoint"]
    model = load_model(checkpoint)
    paths = sorted((images / "val").rglob("*.jpg"))
    assert all(p.error is None for p in predict_each(model, paths))
    model_file, _ = export(checkpoint, "onnx", tmp_path / "model.onnx")
    assert model_file.stat().st_size > 0
