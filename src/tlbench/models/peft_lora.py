"""strategy=lora: Hugging Face peft's LoRA on a backbone's conv / linear layers, and merged back for serving.

peft injects its LoRA layers in place (`LoraModel` on the trunk): a layer W becomes W (frozen) + scale·B·A
with A, B of rank r and scale = alpha / r, B starting at 0 so training starts from the pretrained network.
Checkpoints keep W, A and B apart: a merged W + scale·B·A cannot be split back exactly, and a resumed run
must continue from the very same A and B. Serving merges (`merge`, peft's merge_and_unload): predict, export
and Grad-CAM then see the plain network, with the original module names and no peft layer.

peft is imported only here, and only when a LoRA network is built or loaded (it is an optional extra)."""

from __future__ import annotations

from typing import Any

from torch import nn

from tlbench.models.strategies import PEFT, Lora

# strategy.lora_targets names (config/schema.LORA_TARGETS) → the layer types peft's LoRA adapts.
LAYER_TYPES: dict[str, type[nn.Module]] = {"conv": nn.Conv2d, "linear": nn.Linear}


def require_peft() -> Any:
    try:
        import peft.tuners.lora
    except ImportError:
        raise ImportError(f"strategy=lora needs the peft package: {PEFT[1]}") from None
    return peft


def lora_targets(trunk: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Module names in `trunk` of the `targets` types, less two kinds peft cannot adapt as they are used:
    grouped / depthwise convs (peft cannot merge their adapters, and an adapter there would hold more
    parameters than the layer) and linear layers inside torch's MultiheadAttention (it reads their weights
    directly, so a wrapper would never run: torchvision's ViT out_proj)."""
    unknown = [t for t in targets if t not in LAYER_TYPES]
    if unknown:
        valid = ", ".join(LAYER_TYPES)
        raise ValueError(f"strategy.lora_targets: unknown layer type(s) {unknown}; valid: {valid}")
    types = tuple(LAYER_TYPES[t] for t in targets)
    attention = {name for name, module in trunk.named_modules() if isinstance(module, nn.MultiheadAttention)}
    return [
        name
        for name, module in trunk.named_modules()
        if isinstance(module, types)
        and getattr(module, "groups", 1) == 1
        and name.rpartition(".")[0] not in attention
    ]


class LoraAdapters:
    """The peft tuner of a trunk with LoRA layers in it. Not an nn.Module on purpose: it holds the trunk, and
    registered beside the network it would put every weight in the state dict twice."""

    def __init__(self, trunk: nn.Module, settings: Lora) -> None:
        peft = require_peft()
        names = lora_targets(trunk, settings.targets)
        if not names:
            raise ValueError(
                f"strategy.lora_targets={list(settings.targets)}: this backbone has no such layer that LoRA "
                f"can adapt; try strategy.lora_targets=[{','.join(LAYER_TYPES)}]"
            )
        config = peft.LoraConfig(
            r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=names
        )
        try:
            self.tuner = peft.tuners.lora.LoraModel(trunk, config, "default")
        except ValueError as error:  # e.g. a rank a grouped layer's channels do not divide
            raise ValueError(f"strategy=lora: peft cannot adapt this backbone: {error}") from None
        self.layers = len(names)

    def merge(self) -> nn.Module:
        """Fold every adapter into its layer and put the plain layer back (in place); returns the trunk."""
        return self.tuner.merge_and_unload()
