"""`make bench`: the strategy notebook's loop, tlbench's product path and the compute ceiling, in one process.

On the same images (an ImageFolder of symlinks built in a temporary folder: the notebook's train subset,
its test split, and a few other train images that tlbench validates on):
  (a) the seed notebook's loop as it was written (benchmarks/notebook_loop.py), freeze / partial / full;
  (b) tlbench's product path: `tlbench.run.train.run(overrides)`, what `python -m tlbench.train` runs, for the
      same strategies, backbone, epochs, batch size, image size and test images. Each call is timed whole
      (config, data setup and decoding, fit, test, checkpoints); train images/s, accuracy, peak memory,
      precision and device come from the results it returns (results.json);
  (c) the synthetic compute ceiling: random tensors already on the device (bf16 + channels_last on a GPU),
      train-step and forward-only images/s.
Besides: freeze with strategy.cache_features on and off, and full fine-tuning's images/s ÷ the ceiling.
It prints one markdown table with the ratios and checks the issue's targets for the device it ran on.

    python benchmarks/bench.py --out benchmarks/results.json    # full size (a GPU)
    python benchmarks/bench.py --quick                           # the reduced CPU workload, a few minutes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from tlbench.models.backbones import build_backbone
from tlbench.run.train import run as run_tlbench

# tlbench's fast path is its default (data.pipeline=auto, strategy.cache_features=auto for freeze; steps
# eager): the bench adds only a fresh decode cache, so decoding is timed too, once per bench run, as a sweep
# over the same images decodes once. The one place to change what the bench asks for.
FAST = {
    "every": ["data.cache_dir={cache_dir}"],
    "freeze": [],
}
# The freeze run it is compared with: the same, with the frozen trunk run at every step.
FREEZE_UNCACHED = ["strategy.cache_features=false"]
# On a GPU, full fine-tuning again with its steps replayed as CUDA graphs: what decides optim.cuda_graph's
# default (make gpu-check).
FULL_GRAPHED = ["optim.cuda_graph=true"]

HERE = Path(__file__).resolve().parent
STRATEGIES = ("freeze", "partial", "full")
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "cifar10"
# The one backbone with ImageNet weights offline; every other one runs from random init, as in the notebook.
PRETRAINED = ("efficientnet_lite0",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Workload:
    data: str = str(DEFAULT_DATA)
    backbones: tuple[str, ...] = ("resnet18",)
    epochs: int = 10
    per_class: int = 300
    # tlbench's validation images: the next ones of each class, outside the notebook's subset.
    val_per_class: int = 50
    test_per_class: int | None = None  # None: every test image
    size: int = 224
    batch_size: int = 64
    workers: int = 2
    # full-fine-tuning throughput ÷ ceiling for these (those not in `backbones` get a product `full` run)
    ceiling: tuple[str, ...] = ("resnet18", "resnet50")
    ceiling_batch: int = 256
    ceiling_steps: int = 30
    freeze_uncached: bool = True


# 2 CPU cores, a few minutes: Lite0's real ImageNet weights make the accuracy comparison mean something.
QUICK = Workload(
    backbones=("efficientnet_lite0",),
    epochs=2,
    per_class=20,
    val_per_class=5,
    test_per_class=20,
    size=224,  # the resolution the weights were trained at, where CPU time goes (issue 7 part 4)
    batch_size=32,
    ceiling=("efficientnet_lite0",),
    ceiling_batch=32,
    ceiling_steps=8,
)


# ------------------------------------------------------------------------------------------------ the data
def class_files(folder: Path) -> dict[str, list[Path]]:
    """Class name → its images in name order, as torchvision's ImageFolder (the notebook) lists them."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    return {
        name: sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for name in classes
    }


def link_images(w: Workload, dest: Path) -> dict[str, int]:
    """dest/{train,val,test}/<class>/ as symlinks: train = the notebook's subset (the first `per_class` of
    each class), val = the next `val_per_class` (tlbench only), test = the first `test_per_class` of the
    test split. Returns the number of images per split."""
    source = Path(w.data)
    train, test = class_files(source / "train"), class_files(source / "test")
    picks = {
        "train": {c: files[: w.per_class] for c, files in train.items()},
        "val": {c: files[w.per_class : w.per_class + w.val_per_class] for c, files in train.items()},
        "test": {c: files[: w.test_per_class] for c, files in test.items()},
    }
    for split, chosen in picks.items():
        for name, files in chosen.items():
            if not files:
                raise ValueError(f"{source}: class {name} has no images left for the {split} split")
            (dest / split / name).mkdir(parents=True)
            for path in files:
                (dest / split / name / path.name).symlink_to(path.resolve())
    return {split: sum(len(f) for f in chosen.values()) for split, chosen in picks.items()}


# --------------------------------------------------------------------------------------- (a) the notebook
def load_notebook_loop():
    """benchmarks/notebook_loop.py, imported from beside this file."""
    spec = importlib.util.spec_from_file_location("notebook_loop", HERE / "notebook_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_notebook(root: Path, backbone: str, w: Workload, device: torch.device) -> dict:
    """The notebook's three strategies; its cuDNN settings (deterministic) are undone afterwards, so the
    runs after it start from what a fresh process has."""
    notebook = load_notebook_loop()
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    start = time.perf_counter()
    runs = notebook.run_notebook(
        data=str(root),
        backbone=backbone,
        epochs=w.epochs,
        per_class=None,  # the folder holds exactly the notebook's subset
        test_per_class=None,
        size=w.size,
        batch_size=w.batch_size,
        workers=w.workers,
        device=device.type,
    )
    total_s = time.perf_counter() - start
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    return {"strategies": runs, "total_s": total_s}


# ------------------------------------------------------------------------------------- (b) the product path
def tlbench_overrides(root: Path, backbone: str, strategy: str, w: Workload, cache_dir: Path) -> list[str]:
    """What a user would type for the notebook's setting, plus FAST."""
    overrides = [
        "data=imagefolder",
        f"data.root={root}",
        f"data.image_size={w.size}",
        f"data.batch_size={w.batch_size}",
        f"data.num_workers={w.workers}",
        "data.train_crop_scale=[0.6,1.0]",  # the notebook's RandomResizedCrop(scale=(0.6, 1.0))
        f"backbone={backbone}",
        f"strategy={strategy}",
        f"trainer.max_epochs={w.epochs}",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "seed=0",
    ]
    if backbone not in PRETRAINED:
        overrides.append("backbone.weights=null")
        if strategy != "freeze":
            # Random init has no ImageNet statistics to keep: BatchNorm learns, as in the notebook.
            overrides.append("strategy.bn=train")
    fast = FAST["every"] + FAST.get(strategy, [])
    return [o.format(cache_dir=cache_dir) for o in fast] + overrides


def run_product(overrides: list[str], run_dir: Path) -> dict:
    start = time.perf_counter()
    results = run_tlbench(overrides, run_dir=run_dir)
    wall_s = time.perf_counter() - start
    return {
        "wall_s": wall_s,
        "train_img_s": results["train_images_per_s"],
        "test_acc": results["metrics"]["test/acc"],
        "val_loss": results["metrics"].get("val/loss"),
        "cuda_graph": results.get("cuda_graph"),
        "cuda_graph_error": results.get("cuda_graph_error"),
        "peak_mem_mb": results["peak_memory_mb"],
        "peak_memory_kind": results.get("peak_memory_kind"),
        "precision": results["precision"],
        "device": results["device"],
        "split_sizes": results["split_sizes"],
        "feature_cache": results.get("feature_cache"),
        "overrides": overrides,
    }


# ---------------------------------------------------------------------------------------- (c) the ceiling
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceiling(backbone: str, batch: int, size: int, steps: int, device: torch.device) -> dict:
    """Images/s with the data already on the device: bf16 autocast + channels_last + fused AdamW on CUDA,
    fp32 on a CPU (tlbench's precision there)."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    layout = torch.channels_last  # the faster layout on both: tensor cores, and oneDNN on a CPU
    net = build_backbone(backbone, 10, weights=None).net.to(device, memory_format=layout)
    x = torch.randn(batch, 3, size, size, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=cuda or None)
    loss_fn = nn.CrossEntropyLoss()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def train_step():
        with autocast():
            loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward():
        with torch.inference_mode(), autocast():
            net(x)

    backends = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    result = {"batch": batch, "precision": "bf16-mixed" if cuda else "32-true"}
    for name, step, train_mode in (("train_img_s", train_step, True), ("forward_img_s", forward, False)):
        net.train(train_mode)
        for _ in range(max(2, steps // 4)):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        result[name] = batch * steps / (time.perf_counter() - start)
    torch.backends.cudnn.benchmark = backends
    if cuda:
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def warm_up(device: torch.device) -> None:
    """Start CUDA and load cuDNN before anything is timed, so neither side pays for it."""
    if device.type == "cuda":
        conv = nn.Conv2d(3, 8, 3).to(device)
        conv(torch.randn(2, 3, 16, 16, device=device)).sum().backward()
        sync(device)


# ----------------------------------------------------------------------------------------------- the bench
def run_bench(w: Workload, device: torch.device | None = None) -> dict:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    warm_up(device)
    report = {"machine": machine(), "workload": asdict(w), "fast": FAST, "runs": {}, "ceiling": {}}
    with tempfile.TemporaryDirectory(prefix="tlbench-bench-") as tmp:
        root, cache_dir, runs_dir = Path(tmp) / "images", Path(tmp) / "decoded", Path(tmp) / "runs"
        report["images"] = link_images(w, root)
        for backbone in w.backbones:
            run = {"notebook": run_notebook(root, backbone, w, device), "tlbench": {}}
            for strategy in STRATEGIES:
                overrides = tlbench_overrides(root, backbone, strategy, w, cache_dir)
                run["tlbench"][strategy] = run_product(overrides, runs_dir / f"{backbone}_{strategy}")
            run["tlbench_total_s"] = sum(r["wall_s"] for r in run["tlbench"].values())
            if w.freeze_uncached:
                overrides = tlbench_overrides(root, backbone, "freeze", w, cache_dir) + FREEZE_UNCACHED
                run["freeze_uncached"] = run_product(overrides, runs_dir / f"{backbone}_freeze_uncached")
            if device.type == "cuda":
                overrides = tlbench_overrides(root, backbone, "full", w, cache_dir) + FULL_GRAPHED
                run["full_graphed"] = run_product(overrides, runs_dir / f"{backbone}_full_graphed")
            report["runs"][backbone] = run
        for backbone in w.ceiling:
            if backbone in report["runs"]:
                full = report["runs"][backbone]["tlbench"]["full"]
            else:
                overrides = tlbench_overrides(root, backbone, "full", w, cache_dir)
                full = run_product(overrides, runs_dir / f"{backbone}_full")
            report["ceiling"][backbone] = {
                **ceiling(backbone, w.ceiling_batch, w.size, w.ceiling_steps, device),
                "tlbench_full_img_s": full["train_img_s"],
            }
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["targets"] = targets(report, device, w)
    return report


# --------------------------------------------------------------------------------------------- the report
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1] for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0].strip() if names else cpu
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def acc_noise(p: float, n: int) -> float:
    """Two standard deviations of the difference of two accuracies measured on n test images each."""
    return 2 * math.sqrt(2 * p * (1 - p) / n)


def speedups(run: dict) -> dict[str, float]:
    nb = run["notebook"]["strategies"]
    ratios = {s: nb[s]["wall_s"] / run["tlbench"][s]["wall_s"] for s in STRATEGIES}
    ratios["experiment"] = run["notebook"]["total_s"] / run["tlbench_total_s"]
    return ratios


def freeze_cache_ratio(run: dict) -> float | None:
    uncached = run.get("freeze_uncached")
    if not uncached or not uncached["train_img_s"]:
        return None
    return run["tlbench"]["freeze"]["train_img_s"] / uncached["train_img_s"]


def targets(report: dict, device: torch.device, w: Workload) -> list[dict]:
    """The issue's targets for the device the bench ran on: [{target, measured, met}]."""
    rows = []
    full_size = device.type == "cuda" and w == replace(Workload(), data=w.data, backbones=w.backbones)
    note = "" if device.type == "cpu" or full_size else " (not the target's workload)"
    for backbone, run in report["runs"].items():
        ratio = speedups(run)["experiment"]
        if device.type == "cuda":
            total = run["tlbench_total_s"]
            rows.append(
                {
                    "target": f"{backbone}: 3-strategy experiment ≤ 15 s{note}",
                    "measured": f"{total:.1f} s",
                    "met": total <= 15,
                }
            )
            rows.append(
                {
                    "target": f"{backbone}: experiment ≥ 10× the notebook loop{note}",
                    "measured": f"{ratio:.1f}×",
                    "met": ratio >= 10,
                }
            )
            cache = freeze_cache_ratio(run)
            if cache is not None:
                rows.append(
                    {
                        "target": f"{backbone}: freeze on cached features ≥ 20× an end-to-end frozen epoch",
                        "measured": f"{cache:.2f}× (train img/s, embedding each epoch's view included)",
                        "met": cache >= 20,
                    }
                )
            if "full_graphed" in run:
                rows.append(graph_target(backbone, run["tlbench"]["full"], run["full_graphed"], report))
        else:
            rows.append(
                {
                    "target": f"{backbone}: experiment ≥ 3× the notebook loop",
                    "measured": f"{ratio:.2f}×",
                    "met": ratio >= 3,
                }
            )
            n = report["images"]["test"]
            for s in STRATEGIES:
                a = run["notebook"]["strategies"][s]["test_acc"]
                b = run["tlbench"][s]["test_acc"]
                noise = acc_noise((a + b) / 2, n)
                rows.append(
                    {
                        "target": f"{backbone} {s}: test acc ≥ the notebook's, within noise",
                        "measured": f"{b:.3f} vs {a:.3f} (2σ of {n} test images: ±{noise:.3f})",
                        "met": b >= a - noise,
                    }
                )
    if device.type == "cuda":
        floors = {"resnet18": 8900, "resnet50": 3000}
        for backbone, c in report["ceiling"].items():
            share = c["tlbench_full_img_s"] / c["train_img_s"]
            floor = floors.get(backbone)
            rows.append(
                {
                    "target": f"{backbone}: full fine-tuning ≥ 75% of the bf16 ceiling"
                    + (f" (≥ {floor:,} img/s)" if floor else "")
                    + note,
                    "measured": f"{c['tlbench_full_img_s']:.0f} img/s = {share:.2f}",
                    "met": share >= 0.75 and (floor is None or c["tlbench_full_img_s"] >= floor),
                }
            )
    return rows


def graph_target(backbone: str, eager: dict, graphed: dict, report: dict) -> dict:
    """optim.cuda_graph=true against eager full fine-tuning: faster by a tenth at least, as accurate."""
    speed = (graphed["train_img_s"] or 0.0) / (eager["train_img_s"] or float("inf"))
    noise = acc_noise((eager["test_acc"] + graphed["test_acc"]) / 2, report["images"]["test"])
    same = abs(graphed["test_acc"] - eager["test_acc"]) <= noise
    error = graphed.get("cuda_graph_error")
    accs = f"test acc {graphed['test_acc']:.3f} vs {eager['test_acc']:.3f} (±{noise:.3f})"
    return {
        "target": f"{backbone}: full, optim.cuda_graph=true ≥ 1.1× eager train img/s, test acc within noise",
        "measured": f"{speed:.2f}×; {accs}" + (f"; capture failed: {error}" if error else ""),
        "met": speed >= 1.1 and same and graphed.get("cuda_graph") is True,
    }


def fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def fast_path() -> str:
    freeze_only = [f"(freeze) {o}" for o in FAST["freeze"]]
    return " ".join(FAST["every"] + freeze_only).replace("{cache_dir}", "<tmp>")


def markdown(report: dict) -> str:
    m, w = report["machine"], report["workload"]
    images = report["images"]
    lines = [
        f"machine: {m['gpu'] or 'no GPU'}; {m['cpu']} ({m['cpu_cores']} cores); torch {m['torch']}",
        f"workload: {', '.join(w['backbones'])}, {w['epochs']} epoch(s), {images['train']} train images "
        f"({w['per_class']}/class), {images['test']} test images, {w['size']} px, batch {w['batch_size']}, "
        f"{w['workers']} loader workers; tlbench fast path: {fast_path()}",
        "",
        "| backbone | strategy | notebook wall s | tlbench wall s | speed-up | notebook train img/s "
        "| tlbench train img/s | notebook test acc | tlbench test acc | notebook peak MB | tlbench peak MB "
        "| tlbench precision |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for backbone, run in report["runs"].items():
        nb, tl, ratio = run["notebook"]["strategies"], run["tlbench"], speedups(run)
        rows = [(s, nb[s], tl[s], ratio[s]) for s in STRATEGIES]
        if "freeze_uncached" in run:
            rows.append(("freeze, cache_features=false", nb["freeze"], run["freeze_uncached"], None))
        if "full_graphed" in run:
            rows.append(("full, cuda_graph=true", nb["full"], run["full_graphed"], None))
        for label, a, b, speedup in rows:
            if speedup is None:
                speedup = a["wall_s"] / b["wall_s"]
            lines.append(
                f"| {backbone} | {label} | {a['wall_s']:.1f} | {b['wall_s']:.1f} | {speedup:.2f}× "
                f"| {a['train_img_s']:.0f} | {fmt(b['train_img_s'], '.0f')} | {a['test_acc']:.3f} "
                f"| {b['test_acc']:.3f} | {a['peak_mem_mb']:.0f} | {b['peak_mem_mb']:.0f} "
                f"| {b['precision']} |"
            )
        lines.append(
            f"| {backbone} | **experiment** (3 strategies) | {run['notebook']['total_s']:.1f} "
            f"| {run['tlbench_total_s']:.1f} | **{ratio['experiment']:.2f}×** | | | | | | | |"
        )
    lines += [
        "",
        "| backbone | ceiling train img/s | ceiling forward img/s | ceiling batch, precision "
        "| tlbench full train img/s | ÷ ceiling |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for backbone, c in report["ceiling"].items():
        full = c["tlbench_full_img_s"]
        lines.append(
            f"| {backbone} | {c['train_img_s']:.0f} | {c['forward_img_s']:.0f} "
            f"| {c['batch']}, {c['precision']} | {fmt(full, '.0f')} "
            f"| {fmt(full / c['train_img_s'] if full else None, '.2f')} |"
        )
    for backbone, run in report["runs"].items():
        cache = freeze_cache_ratio(run)
        if cache is not None:
            lines += [
                "",
                f"freeze, {backbone}: strategy.cache_features=true trains at {cache:.2f}× the images/s of "
                "cache_features=false (both from results.json; the cached side includes embedding each "
                "epoch's augmented view).",
            ]
    lines += ["", "| target | measured | met? |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "What differs (the rest is the same on both sides: images, epochs, batch, size, seed 0):"]
    lines += [f"- {note}" for note in NOTES]
    return "\n".join(lines)


NOTES = (
    "Validation: the notebook has none and tests its last epoch; tlbench validates every epoch on "
    "`val_per_class` other CIFAR train images (outside the notebook's subset, so both train on the same "
    "images) and tests its best-validation checkpoint. That validation is inside tlbench's wall time.",
    "Wall time: notebook = its own per-strategy build → test (the experiment row: the whole call, loaders "
    "included); tlbench = the whole `tlbench.train.run` call (config, listing and checking files, decoding, "
    "fit, test, checkpoints). The first tlbench run decodes into `data.cache_dir`; the others read it.",
    "Recipe: tlbench uses each strategy's defaults (cosine schedule; freeze = the trunk frozen with "
    "BatchNorm in eval mode, stem included; partial = the last stage + head); the notebook keeps its bugs "
    "(freeze leaves the stem trainable and BatchNorm in train mode) and a constant learning rate. "
    "Random-init backbones train BatchNorm in partial/full (strategy.bn=train) on both sides.",
    "Preprocessing: tlbench uses each backbone's own preset (Lite0: mean/std 0.5, bicubic); the notebook "
    "ImageNet statistics and bilinear for every backbone.",
    "Precision: tlbench bf16-mixed on a GPU, fp32 on a CPU; the notebook fp32 everywhere.",
    "Peak memory: on a GPU, max allocated per run on both sides; on a CPU, the notebook's is the process's "
    "peak RSS since it started and tlbench's the peak RSS from its own train start.",
)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_workload(args: argparse.Namespace) -> Workload:
    w = QUICK if args.quick else Workload()
    changes = {}
    for f in fields(Workload):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.name in ("backbones", "ceiling"):
            value = tuple(x for x in value.split(",") if x)
        changes[f.name] = value
    if args.no_freeze_uncached:
        changes["freeze_uncached"] = False
    return replace(w, **changes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the reduced CPU workload (Lite0, 224 px)")
    parser.add_argument("--out", help="write the report as JSON here, and the table beside it as .md")
    parser.add_argument("--data", help="CIFAR-10 as ImageFolder: <data>/{train,test}/<class>/*.jpg")
    parser.add_argument("--backbones", help="comma-separated: resnet18 (random init), efficientnet_lite0")
    parser.add_argument("--ceiling", help="comma-separated models for the ceiling ('' for none)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--per-class", type=int)
    parser.add_argument("--val-per-class", type=int)
    parser.add_argument("--test-per-class", type=int)
    parser.add_argument("--size", type=int, help="image size in px")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int, help="DataLoader workers on both sides")
    parser.add_argument("--ceiling-batch", type=int)
    parser.add_argument("--ceiling-steps", type=int)
    parser.add_argument("--no-freeze-uncached", action="store_true", help="skip the cache_features=false run")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    report = run_bench(parse_workload(args))
    report["bench_wall_s"] = time.perf_counter() - started
    report["command"] = " ".join(["python benchmarks/bench.py", *(sys.argv[1:] if argv is None else argv)])
    table = markdown(report)
    print("\n" + table + f"\n\nbench wall time: {report['bench_wall_s']:.0f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        out.with_suffix(".md").write_text(table + "\n")
    return report


if __name__ == "__main__":
    main()
