"""A pretrained network adapted to a new task: classifier removed, first conv folded for grayscale, and its
parameters named in stages stem to head (each in exactly one), so strategies never special-case a network."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torchvision.models as tv_models
from timm.models import group_parameters
from torch import nn

# Where torchvision classification models keep their ImageNet classifier, in the order to look.
_CLASSIFIER_ATTRS = ("fc", "classifier", "heads", "head")
# Containers whose children are the natural stages (efficientnet/mobilenet/convnext/densenet/swin `features`,
# mnasnet `layers`, regnet `trunk_output`, maxvit `blocks`).
_STAGE_CONTAINERS = ("features", "layers", "trunk_output", "blocks")


def classifier_names(model: nn.Module, source: str) -> list[str]:
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


def remove_classifier(model: nn.Module, source: str) -> int:
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


def first_conv_name(model: nn.Module, source: str) -> str:
    first_conv = model.pretrained_cfg.get("first_conv") if source != "torchvision" else None
    if isinstance(first_conv, str):
        return first_conv
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def adapt_input_conv(model: nn.Module, conv_name: str, mode: str) -> None:
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


def name_stages(net: nn.Module, source: str) -> list[tuple[str, list[str]]]:
    if source == "torchvision":
        trunk_stages = _STAGE_RULES.get(type(net.trunk), _child_stages)(net.trunk)
    else:
        trunk_stages = _timm_stages(net.trunk)
    stages = [(name, [f"trunk.{prefix}" for prefix in prefixes]) for name, prefixes in trunk_stages]
    stages.append(("head", ["head"]))
    check_stages_cover(net, stages)
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


def is_under_any(name: str, prefixes: list[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def check_stages_cover(net: nn.Module, stages: list[tuple[str, list[str]]]) -> None:
    """Strategies freeze by stage: a parameter in no stage, or in two, would train or freeze wrongly."""
    for name, _ in net.named_parameters():
        owners = [stage for stage, prefixes in stages if is_under_any(name, prefixes)]
        if len(owners) != 1:
            raise RuntimeError(f"Parameter {name} is in stages {owners}; every parameter needs exactly one")
