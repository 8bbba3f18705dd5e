"""Which parameters of a training backbone stage a strategy trains, by the role a parameter plays in its
module, so one rule fits torchvision, timm and ViT networks alike: every bias (BitFit), every normalisation
layer's scale and shift, or peft's LoRA adapters. The head is not selected from: it always trains whole."""

from __future__ import annotations

from torch import nn

ALL = "all"
# Norm layers by type: BatchNorm / InstanceNorm / SyncBatchNorm (_NormBase), LayerNorm, GroupNorm, RMSNorm.
# timm's own (BatchNormAct2d, LayerNorm2d, GroupNorm1) subclass these; its RmsNorm and the like do not, so a
# class named "...Norm..." counts too.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
# peft names every LoRA parameter lora_A / lora_B / lora_embedding_* / lora_magnitude_vector, and picks them
# by this prefix itself (LoraModel.prefix) when it marks adapters trainable.
ADAPTER_PREFIX = "lora_"


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower()


def is_bias(parameter_name: str) -> bool:
    """A bias by its name in its module: `bias` (conv, linear, norm shifts) or `*_bias` (torch's
    MultiheadAttention `in_proj_bias`, BEiT-style `q_bias` / `v_bias`)."""
    leaf = parameter_name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias")


def selected_parameters(net: nn.Module, kind: str) -> set[str] | None:
    """The names of the parameters of `kind` in `net` (None for `all`: no selection)."""
    if kind == ALL:
        return None
    if kind == "biases":
        return {name for name, _ in net.named_parameters() if is_bias(name)}
    if kind == "norms":
        return {
            f"{module_name}.{name}" if module_name else name
            for module_name, module in net.named_modules()
            if is_norm(module)
            for name, _ in module.named_parameters(recurse=False)
        }
    if kind == "adapters":
        return {name for name, _ in net.named_parameters() if ADAPTER_PREFIX in name}
    raise ValueError(f"unknown parameter selection {kind!r}; choose one of: all, biases, norms, adapters")
