"""`python -m tlbench.rank`: score backbones on the training images before training any of them.

Each backbone embeds the training split once (eval preprocessing of its own preset; the decoded images come
from the decode cache that training uses, the features are cached beside them), then the scores of
analysis/transferability.py are computed on the features (and, where the backbone keeps a source
classifier, on its softmax outputs for LEEP and NCE). Out: a table on screen, rank.json and rank.png.

    python -m tlbench.rank experiment=hymenoptera 'rank.backbones=[efficientnet_lite0,resnet18]'
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import center_crop
from tqdm import tqdm

from tlbench.analysis import transferability as scores
from tlbench.analysis.transfer_check import RANK_FILE, plot_rank, render_rank_table
from tlbench.config.schema import ConfigError, RunConfig
from tlbench.data.augment import EvalPreprocess
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.decode import cache_file, decode_to_uint8, file_fingerprint, load_cached, save_cached
from tlbench.data.pipelines import ImageListDataset, MemoryPipeline
from tlbench.data.preset import eval_transform
from tlbench.models.backbones import build_backbone, build_imagenet_classifier, get_preset
from tlbench.results.files import versions, write_json_atomic
from tlbench.run import sweep
from tlbench.run.checks import check_config
from tlbench.run.train import is_user_error

log = logging.getLogger("tlbench")
BACKBONE_KEYS = ("name", "weights", "checkpoint", "in_chans_mode")
_FEATURE_CACHE_FORMAT = 2  # 2: random inits seeded


@dataclass(frozen=True)
class Candidate:
    """One backbone to score: a label for the table and the backbone group values it is built from."""

    label: str
    backbone: dict[str, Any]


def default_label(values: Mapping[str, Any]) -> str:
    if values.get("checkpoint"):
        return f"{values['name']} ({Path(str(values['checkpoint'])).name})"
    return values["name"] if values.get("weights") else f"{values['name']} (random init)"


def candidates(entries: Any, group: Mapping[str, Any], cli_keys: set[str]) -> list[Candidate]:
    """rank.backbones → candidates. A name takes weights=DEFAULT and in_chans_mode from the backbone group,
    except for the backbone.<key> the command line set (those apply to every name); a dict sets its own
    keys. rank.backbones=null: the composed backbone group alone."""
    if entries is None:
        return [Candidate(default_label(group), dict(group))]
    if isinstance(entries, str) or not isinstance(entries, list | tuple) or not entries:
        raise ConfigError(
            f"rank.backbones must be a list of backbone names or dicts, got {entries!r}: "
            "e.g. 'rank.backbones=[efficientnet_lite0,resnet18]'"
        )
    shared = {"weights": "DEFAULT", "checkpoint": None, "in_chans_mode": group.get("in_chans_mode", "sum")}
    shared |= {key: group.get(key) for key in cli_keys if key in BACKBONE_KEYS and key != "name"}
    found = []
    for i, entry in enumerate(entries):
        values = (
            {"name": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, Mapping) else None
        )
        unknown = sorted(set(values or {"?": 0}) - {*BACKBONE_KEYS, "label"})
        if values is None or unknown or not isinstance(values.get("name"), str):
            raise ConfigError(
                f"rank.backbones[{i}]={entry!r}: give a backbone name or a dict of "
                f"{', '.join(BACKBONE_KEYS)} (and an optional label)"
                + (f"; unknown key {unknown[0]!r}" if unknown and values is not None else "")
            )
        label = values.pop("label", None)
        values = shared | values
        found.append(Candidate(str(label or default_label(values)), values))
    labels = [c.label for c in found]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(
            f"rank.backbones lists {twice[0]!r} twice; give one of them a label: {{label: ...}}"
        )
    return found


def check_candidate(cfg: DictConfig, candidate: Candidate) -> RunConfig:
    """The typed config of a training run with this backbone: the same checks, the same messages."""
    run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(run_cfg):
        run_cfg.pop("rank", None)
        run_cfg.backbone = candidate.backbone
    try:
        return check_config(run_cfg)
    except ValueError as error:
        if "backbone" not in str(error):  # the message names its key: data.root=... needs no backbone label
            raise
        raise ConfigError(f"rank.backbones: {candidate.label}: {error}") from None


@dataclass
class Embedded:
    features: np.ndarray  # (N, D) float32, eval view of each training image
    source_probs: np.ndarray | None  # (N, Z) softmax of the source classifier, where there is one
    source_note: str | None  # why LEEP and NCE are n/a
    seconds: float
    cached: bool


def source_classifier(
    run: RunConfig, trunk: nn.Module, feature_dim: int
) -> tuple[nn.Linear | None, str | None]:
    """The classifier the backbone's own weights came with (LEEP, NCE need its outputs), or why not."""
    b = run.backbone
    if b.checkpoint:
        # The checkpoint's classifier: what the file holds beyond the trunk's tensors, if that is one layer.
        state = torch.load(b.checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else {}
        extra = {k: v for k, v in state.items() if k not in trunk.state_dict()}
        weight = [v for k, v in extra.items() if k.endswith("weight") and v.ndim == 2]
        if len(extra) != 2 or len(weight) != 1 or weight[0].shape[1] != feature_dim:
            return None, "the checkpoint holds no single linear source classifier"
        head = nn.Linear(feature_dim, weight[0].shape[0])
        head.load_state_dict({k.rsplit(".", 1)[-1]: v for k, v in extra.items()})
        return head, None
    if not b.weights:
        return None, "random init has no source classifier"
    try:
        return build_imagenet_classifier(b.name, b.weights)[0].net.head, None
    except ValueError as error:
        return None, str(error)


def eval_train_images(datamodule: ImageDataModule) -> torch.Tensor | None:
    """The training split as uint8 eval crops (resize + centre crop), from the decode cache training uses:
    its train images are decoded at resize_size, square (room for random crops), and their centre crop is
    the eval crop exactly. Images smaller than that are kept at their own size there; those are decoded
    with the eval geometry instead (cached too), as the memory pipeline decodes validation images.
    None under the streaming pipeline (too big to hold)."""
    pipeline, p = datamodule.pipeline, datamodule.preset
    if not isinstance(pipeline, MemoryPipeline):
        return None
    held = pipeline.splits["train"]
    if held.plan.size == p.resize_size:
        return center_crop(held.images, [p.crop_size, p.crop_size])
    split, data = datamodule.data.splits["train"], datamodule.data
    files_only = all(isinstance(item, str) for item in split.items)
    return decode_to_uint8(
        split.items, p.resize_size, datamodule.settings.in_chans, p.crop_size, p.interpolation,
        cache_dir=datamodule.settings.cache_dir if files_only else None, read=data.read,
    ).images  # fmt: skip


def eval_batches(datamodule: ImageDataModule, batch_size: int) -> Iterator[torch.Tensor]:
    """The training images as the network sees them at eval: resize + centre crop, normalised."""
    p = datamodule.preset
    images = eval_train_images(datamodule)
    if images is not None:
        normalise = EvalPreprocess(p.mean, p.std)
        yield from (normalise(images[i : i + batch_size]) for i in range(0, len(images), batch_size))
        return
    dataset = ImageListDataset(datamodule.data.splits["train"], datamodule.data.read, eval_transform(p))
    yield from (x for x, _ in DataLoader(dataset, batch_size, num_workers=datamodule.settings.num_workers))


def feature_cache_path(run: RunConfig, datamodule: ImageDataModule) -> tuple[Path, str] | None:
    """Where this backbone's features of this exact training split live, and the fingerprint they need."""
    items = datamodule.data.splits["train"].items
    cache_dir = datamodule.settings.cache_dir
    if cache_dir is None or not all(isinstance(item, str) for item in items):
        return None
    backbone = asdict(run.backbone)
    fingerprint = file_fingerprint(items)
    if backbone["checkpoint"]:
        fingerprint += file_fingerprint([backbone["checkpoint"]])
        backbone["checkpoint"] = str(Path(backbone["checkpoint"]).resolve())
    # A random init's features are those of the draw from `seed`.
    seed = run.seed if not (backbone["weights"] or backbone["checkpoint"]) else None
    tag = json.dumps(
        [_FEATURE_CACHE_FORMAT, backbone, run.data.in_chans, asdict(datamodule.preset), seed], sort_keys=True
    )
    return cache_file(cache_dir, items, tag, "features"), hashlib.sha256(fingerprint.encode()).hexdigest()


@dataclass
class Model:
    """A backbone built to embed: its trunk, and its source classifier where it has one (or why not)."""

    trunk: nn.Module
    head: nn.Linear | None
    source_note: str | None


def build_model(run: RunConfig) -> Model:
    """The trunk as training builds it (weights, checkpoint, 1-channel conv) and its source classifier."""
    b = run.backbone
    torch.manual_seed(run.seed)  # random init (weights=null) is drawn from `seed`: the same on every rank
    built = build_backbone(b.name, 1, run.data.in_chans, b.weights, b.checkpoint, b.in_chans_mode)
    trunk = built.net.trunk.eval().to(memory_format=torch.channels_last)
    return Model(trunk, *source_classifier(run, trunk, built.feature_dim))


def cached_embedding(run: RunConfig, datamodule: ImageDataModule) -> Embedded | None:
    cached_at = feature_cache_path(run, datamodule)
    hit = load_cached(*cached_at) if cached_at is not None else None
    if hit is None:
        return None
    probs = hit["source_probs"]
    return Embedded(hit["features"].numpy(), None if probs is None else probs.numpy(), hit["note"], 0.0, True)


def embed(run: RunConfig, model: Model, label: str, datamodule: ImageDataModule, batch_size: int) -> Embedded:
    """Features (and source-classifier probabilities) of the training split, cached for the next rank."""
    started = time.perf_counter()
    features, probs = [], []
    total = len(datamodule.data.splits["train"])
    with (
        torch.inference_mode(),
        tqdm(total=total, desc=label, unit="img", file=sys.stderr, disable=None) as bar,
    ):
        for x in eval_batches(datamodule, batch_size):
            f = model.trunk(x.contiguous(memory_format=torch.channels_last)).float()
            features.append(f)
            if model.head is not None:
                probs.append(torch.softmax(model.head(f).double(), dim=1).float())
            bar.update(len(x))
    features_t = torch.cat(features)
    probs_t = torch.cat(probs) if model.head is not None else None
    cached_at = feature_cache_path(run, datamodule)
    if cached_at is not None:
        payload = {"features": features_t, "source_probs": probs_t, "note": model.source_note}
        save_cached(cached_at[0], payload | {"fingerprint": cached_at[1]})
    probs_np = None if probs_t is None else probs_t.numpy()
    return Embedded(features_t.numpy(), probs_np, model.source_note, time.perf_counter() - started, False)


def score(embedded: Embedded, labels: np.ndarray, folds: int, seed: int) -> dict[str, float | None]:
    f, p = embedded.features, embedded.source_probs
    probe, probe_std = scores.linear_probe(f, labels, folds, seed)
    return {
        "logme": scores.log_me(f, labels),
        "leep": None if p is None else scores.leep(p, labels),
        "nce": None if p is None else scores.nce(p.argmax(axis=1), labels),
        "h_score": scores.h_score(f, labels),
        "h_score_bao": scores.h_score(f, labels, shrink=False),
        "probe_acc": probe,
        "probe_acc_std": probe_std,
    }


def rank(cfg: DictConfig, out_dir: Path, cli_keys: set[str] = frozenset()) -> dict[str, Any]:
    """Score every rank.backbones entry; writes rank.json and rank.png into out_dir and returns the json."""
    started = time.perf_counter()
    settings = cfg.get("rank") or {}
    folds, batch_size = int(settings.get("folds", 5)), settings.get("batch_size")
    group = OmegaConf.to_container(cfg.backbone, resolve=True)
    entries = (
        OmegaConf.to_container(settings.get("backbones"), resolve=True)
        if settings.get("backbones") is not None
        else None
    )
    chosen = candidates(entries, group, set(cli_keys))
    runs = [check_candidate(cfg, c) for c in chosen]  # every entry checked before anything is embedded
    data_modules: dict[Any, ImageDataModule] = {}
    ready: list[tuple[ImageDataModule, Embedded | Model]] = []
    # First every backbone's data and model (or its cached features): missing weights, a bad checkpoint or
    # too few images for the folds stop the rank before minutes of embedding, not after.
    for run in runs:
        preset = get_preset(run.backbone.name, run.backbone.weights, run.data.in_chans)
        if preset not in data_modules:  # backbones with the same preprocessing share the decoded images
            data_modules[preset] = ImageDataModule(run.data, preset, seed=run.seed)
            data_modules[preset].setup()
            labels = data_modules[preset].labels("train").numpy()
            scores.require_folds(labels, folds, data_modules[preset].classes)
        datamodule = data_modules[preset]
        ready.append((datamodule, cached_embedding(run, datamodule) or build_model(run)))
    rows = []
    for candidate, run, (datamodule, prepared) in zip(chosen, runs, ready):
        batches = int(batch_size or datamodule.eval_batch_size)
        embedded = (
            prepared
            if isinstance(prepared, Embedded)
            else embed(run, prepared, candidate.label, datamodule, batches)
        )
        labels = datamodule.labels("train").numpy()
        rows.append(
            {
                "label": candidate.label,
                "backbone": backbone_record(run),
                "feature_dim": embedded.features.shape[1],
            }
            | {"scores": score(embedded, labels, folds, run.seed), "source_note": embedded.source_note}
            | {"embed_seconds": embedded.seconds, "features_cached": embedded.cached}
        )
    datamodule = next(iter(data_modules.values()))
    result = {
        "data": data_record(runs[0]),
        "seed": runs[0].seed,
        "classes": datamodule.classes,
        "train_images": len(datamodule.data.splits["train"]),
        "folds": folds,
        "backbones": rows,
        "wall_time_s": time.perf_counter() - started,
        "versions": versions(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / RANK_FILE, result)
    plot_rank(result, out_dir / "rank.png")
    return result


def data_record(run: RunConfig) -> dict[str, Any]:
    """The data values as rank.json keeps them: the image folder as an absolute path (see backbone_record)."""
    values = asdict(run.data)
    if values["root"]:
        values["root"] = str(Path(values["root"]).expanduser().resolve())
    return values


def backbone_record(run: RunConfig) -> dict[str, Any]:
    """The backbone values as rank.json keeps them: a checkpoint as an absolute path (the report matches
    runs to it from wherever it is run)."""
    values = asdict(run.backbone)
    if values["checkpoint"]:
        values["checkpoint"] = str(Path(values["checkpoint"]).expanduser().resolve())
    return values


def command_line_backbone_keys() -> set[str]:
    """The backbone.<key> the command line set: they apply to every name in rank.backbones."""
    if not HydraConfig.initialized():
        return set()
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return {k.removeprefix("backbone.") for k in keys if k.startswith("backbone.")}


def main() -> None:
    sweep.register_with_hydra()
    hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://tlbench.conf", config_name="rank")
def hydra_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = rank(cfg, out_dir, command_line_backbone_keys())
    except Exception as error:
        if not is_user_error(error):
            raise
        print(f"\nerror: {error}", file=sys.stderr)
        sys.exit(1)
    print("\n" + render_rank_table(result))
    print(f"\nrank: {out_dir / RANK_FILE} and rank.png ({result['wall_time_s']:.0f} s)")
