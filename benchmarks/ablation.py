"""Why tlbench's full fine-tuning trailed the notebook loop (issue 9 part 1): one factor at a time.

On the images of bench.py (an ImageFolder of symlinks: the notebook's train subset, its test subset, and a
few other train images that only tlbench validates on), it runs
  - the seed notebook's loop (benchmarks/notebook_loop.py, bugs included) for the strategies asked for,
    seeded per strategy and seed;
  - tlbench's product path, `tlbench.run.train.run(overrides)` (what `python -m tlbench.train` runs), once for
    its defaults and once per variant: the defaults with one factor changed towards the notebook's recipe
    (or away from it), for each seed.
It prints a markdown table (factor, setting, test acc ± the binomial noise of the test set, Δ vs tlbench's
default, Δ vs the notebook) and writes every run to --out as it finishes, so a cut-off run keeps its rows
and `--resume` skips them.

    python benchmarks/ablation.py --out benchmarks/ablation/cpu.json                   # every variant
    python benchmarks/ablation.py --variants default,imagenet_stats --seeds 0,1 --out x.json

Two factors are not config values, so the variant changes them from outside and says so in its setting:
the preprocessing statistics and interpolation (the backbone's preset, `tlbench.models.backbones`), patched
into `tlbench.run.train.get_preset` for that run only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import tlbench.run.train

HERE = Path(__file__).resolve().parent
IMAGENET_STATS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def load_bench():
    """bench.py from beside this file: its data layout, notebook import, product call and noise."""
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench", HERE / "bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules["bench"]


@dataclass(frozen=True)
class Variant:
    key: str
    factor: str
    setting: str
    strategy: str = "full"
    overrides: tuple[str, ...] = ()
    preset: dict = field(
        default_factory=dict
    )  # Preset fields replaced for this run (mean, std, interpolation)
    holdout: bool = False  # no separate val folder: tlbench carves val from the notebook's train images


# The defaults first; each other row changes one thing. Where the notebook differs, the notebook's value.
VARIANTS = (
    Variant("default", "tlbench default", "as shipped (Lite0 preset: mean=std=0.5, bicubic; crop 0.6–1)"),
    Variant(
        "imagenet_stats", "preprocessing statistics", "ImageNet mean/std (notebook)", preset=IMAGENET_STATS
    ),
    Variant("bilinear", "interpolation", "bilinear (notebook)", preset={"interpolation": "bilinear"}),
    Variant(
        "notebook_preprocessing",
        "preprocessing statistics + interpolation",
        "ImageNet mean/std + bilinear (notebook)",
        preset={**IMAGENET_STATS, "interpolation": "bilinear"},
    ),
    Variant(
        "crop_008",
        "crop scale",
        "0.08–1 (data=imagefolder's default)",
        overrides=("data.train_crop_scale=[0.08,1.0]",),
    ),
    Variant(
        "crop_none", "crop scale", "1–1 (no random crop)", overrides=("data.train_crop_scale=[1.0,1.0]",)
    ),
    Variant(
        "lr_x3",
        "learning rates",
        "head 3e-3 / backbone 3e-4",
        overrides=("strategy.head_lr=3e-3", "strategy.backbone_lr=3e-4"),
    ),
    Variant(
        "lr_x0.3",
        "learning rates",
        "head 3e-4 / backbone 3e-5",
        overrides=("strategy.head_lr=3e-4", "strategy.backbone_lr=3e-5"),
    ),
    Variant("constant_lr", "schedule", "constant lr (notebook)", overrides=("optim.scheduler=none",)),
    Variant(
        "warmup_1", "warm-up", "1 epoch linear warm-up, then cosine", overrides=("optim.warmup_epochs=1",)
    ),
    Variant("label_smoothing", "label smoothing", "0.1", overrides=("optim.label_smoothing=0.1",)),
    Variant("epochs_x2", "epochs", "2× the epochs", overrides=("trainer.max_epochs={epochs2}",)),
    Variant("test_last", "checkpoint tested", "last epoch (notebook)", overrides=("trainer.monitor=step",)),
    Variant(
        "holdout_val",
        "validation split",
        "val carved from the train images (10%), as data=cifar10 does",
        overrides=("data.val_fraction=0.1",),
        holdout=True,
    ),
    Variant(
        "streaming",
        "data pipeline",
        "streaming (torchvision transforms per epoch)",
        overrides=("data.pipeline=streaming",),
    ),
    Variant("freeze", "strategy", "freeze (tlbench default)", strategy="freeze"),
    Variant("partial", "strategy", "partial (tlbench default)", strategy="partial"),
    Variant(
        "partial_bn_train",
        "BatchNorm mode",
        "partial, bn=train (notebook: frozen BN follows the batch)",
        strategy="partial",
        overrides=("strategy.bn=train",),
    ),
)
# The two changes that closed the full-fine-tuning gap, tried on the other strategies.
VARIANTS += tuple(
    Variant(f"{strategy}_{key}", factor, setting, strategy=strategy, overrides=overrides)
    for strategy in ("freeze", "partial")
    for key, factor, setting, overrides in (
        ("constant_lr", "schedule", "constant lr (notebook)", ("optim.scheduler=none",)),
        (
            "lr_x3",
            "learning rates",
            "head 3e-3 / backbone 3e-4",
            ("strategy.head_lr=3e-3", "strategy.backbone_lr=3e-4"),
        ),
    )
)
BY_KEY = {v.key: v for v in VARIANTS}


@dataclass(frozen=True)
class Setting:
    data: str
    backbone: str = "efficientnet_lite0"
    # Small enough for a shared 2-core CPU (a full-fine-tuning run in ~1–2 min there); the setting
    # is 300 / class, all 10,000 test images, 224 px, 10 epochs, batch 64 (a GPU).
    per_class: int = 50
    val_per_class: int = 10
    test_per_class: int = 100
    size: int = 64
    epochs: int = 4
    batch_size: int = 32


# ------------------------------------------------------------------------------------------------ the runs
def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def run_notebook_strategy(root: Path, s: Setting, strategy: str, seed: int) -> dict:
    """The notebook's loop for one strategy, on a fresh seed (the notebook seeds once for all three)."""
    notebook = load_bench().load_notebook_loop()
    seed_everything(seed)
    train_loader, test_loader, num_classes = notebook.make_loaders(
        str(root), s.size, None, None, s.batch_size, 0
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return notebook.train_and_evaluate(
        strategy, s.backbone, train_loader, test_loader, num_classes, device, s.epochs, None
    )


@contextlib.contextmanager
def preset_patched(changes: dict):
    """tlbench.run.train builds the data side from `get_preset`: swap a few of its fields for one run, and
    record the preset the run was given (yields a dict that holds it once the run has asked)."""
    original, used = tlbench.run.train.get_preset, {}

    def patched(*args, **kwargs):
        preset = replace(original(*args, **kwargs), **changes)
        used["preset"] = dataclasses.asdict(preset)
        return preset

    tlbench.run.train.get_preset = patched
    try:
        yield used
    finally:
        tlbench.run.train.get_preset = original


def product_overrides(root: Path, s: Setting, v: Variant, seed: int, cache_dir: Path) -> list[str]:
    bench = load_bench()
    w = bench.Workload(
        backbones=(s.backbone,),
        epochs=s.epochs,
        per_class=s.per_class,
        size=s.size,
        batch_size=s.batch_size,
        workers=0,
    )
    base = bench.tlbench_overrides(root, s.backbone, v.strategy, w, cache_dir)
    base = [o for o in base if not o.startswith("seed=")] + [f"seed={seed}"]
    return base + [o.format(epochs2=2 * s.epochs) for o in v.overrides]


def run_variant(roots: dict[str, Path], s: Setting, v: Variant, seed: int, tmp: Path) -> dict:
    root = roots["holdout" if v.holdout else "separate"]
    overrides = product_overrides(root, s, v, seed, tmp / "decoded")
    run_dir = tmp / "runs" / f"{v.key}_seed{seed}"
    with preset_patched(v.preset) as used:
        row = load_bench().run_product(overrides, run_dir)
    row["preset"] = used["preset"]
    # Which epoch the tested (best-validation) checkpoint is from: when it is the last, testing the last
    # epoch as the notebook does would test the same weights.
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    row["best_epoch"] = best["epoch"] + 1
    return row


def link_data(s: Setting, dest: Path) -> dict[str, Path]:
    """separate: train/val/test as bench.py lays them out; holdout: the same train and test, no val folder."""
    bench = load_bench()
    w = bench.Workload(
        data=s.data, per_class=s.per_class, val_per_class=s.val_per_class, test_per_class=s.test_per_class
    )
    separate, holdout = dest / "separate", dest / "holdout"
    bench.link_images(w, separate)
    for split in ("train", "test"):
        (holdout / split).mkdir(parents=True)
        for folder in (separate / split).iterdir():
            (holdout / split / folder.name).symlink_to(folder.resolve())
    return {"separate": separate, "holdout": holdout}


def run_ablation(
    s: Setting,
    variants: list[Variant],
    seeds: list[int],
    notebook_strategies: list[str],
    out: Path | None = None,
    report: dict | None = None,
) -> dict:
    bench = load_bench()
    report = report or {"machine": bench.machine(), "setting": dataclasses.asdict(s), "runs": []}
    done = {(r["side"], r["key"], r["seed"]) for r in report["runs"]}
    with tempfile.TemporaryDirectory(prefix="tlbench-ablation-") as tmp_name:
        tmp = Path(tmp_name)
        roots = link_data(s, tmp / "images")
        jobs = [("notebook", st, seed) for seed in seeds for st in notebook_strategies]
        jobs += [("tlbench", v.key, seed) for seed in seeds for v in variants]
        for side, key, seed in jobs:
            if (side, key, seed) in done:
                continue
            start = time.perf_counter()
            try:
                if side == "notebook":
                    row = run_notebook_strategy(roots["separate"], s, key, seed)
                else:
                    row = run_variant(roots, s, BY_KEY[key], seed, tmp)
            except Exception as error:  # noqa: BLE001 - one failed variant must not cost the others' rows
                print(f"[ablation] {side} {key} seed {seed}: FAILED {type(error).__name__}: {error}")
                report.setdefault("failed", []).append(
                    {"side": side, "key": key, "seed": seed, "error": f"{type(error).__name__}: {error}"}
                )
                continue
            row.update(side=side, key=key, seed=seed, run_s=time.perf_counter() - start)
            report["runs"].append(row)
            print(
                f"[ablation] {side} {key} seed {seed}: test acc {row['test_acc']:.4f} ({row['run_s']:.0f} s)"
            )
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=2, default=str))
    return report


# ------------------------------------------------------------------------------------------------ the table
def mean_acc(report: dict, side: str, key: str) -> tuple[float, int] | None:
    accs = [r["test_acc"] for r in report["runs"] if r["side"] == side and r["key"] == key]
    return (sum(accs) / len(accs), len(accs)) if accs else None


def noise(p: float, n_test: int, n_seeds: int) -> float:
    """2σ of one accuracy averaged over n_seeds runs on the same n_test images (binomial; the seeds'
    own spread is extra and shown by the per-seed column)."""
    return 2 * math.sqrt(p * (1 - p) / (n_test * n_seeds))


def table(report: dict) -> str:
    s = report["setting"]
    n_test = s["test_per_class"] * 10
    bench = load_bench()
    lines = [
        "| factor | setting | strategy | test acc (mean of seeds) ± 2σ | per seed | Δ vs tlbench default "
        "| Δ vs notebook |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    strategies = sorted({BY_KEY[r["key"]].strategy for r in report["runs"] if r["side"] == "tlbench"})
    for st in [
        x for x in ("freeze", "partial", "full") if x in strategies or mean_acc(report, "notebook", x)
    ]:
        nb = mean_acc(report, "notebook", st)
        if nb:
            per_seed = ", ".join(
                f"{r['test_acc']:.3f}" for r in report["runs"] if r["side"] == "notebook" and r["key"] == st
            )
            lines.append(
                f"| notebook loop | as written | {st} | {nb[0]:.3f} ± {noise(nb[0], n_test, nb[1]):.3f} "
                f"| {per_seed} | | |"
            )
    default_key = {"full": "default", "freeze": "freeze", "partial": "partial"}
    for v in VARIANTS:
        got = mean_acc(report, "tlbench", v.key)
        if not got:
            continue
        acc, n = got
        base = mean_acc(report, "tlbench", default_key[v.strategy])
        nb = mean_acc(report, "notebook", v.strategy)
        per_seed = ", ".join(
            f"{r['test_acc']:.3f}" for r in report["runs"] if r["side"] == "tlbench" and r["key"] == v.key
        )
        d_base = f"{acc - base[0]:+.3f}" if base and v.key != default_key[v.strategy] else ""
        d_nb = f"{acc - nb[0]:+.3f}" if nb else ""
        lines.append(
            f"| {v.factor} | {v.setting} | {v.strategy} | {acc:.3f} ± {noise(acc, n_test, n):.3f} "
            f"| {per_seed} | {d_base} | {d_nb} |"
        )
    accs = [r["test_acc"] for r in report["runs"]]
    p = sum(accs) / len(accs)
    lines.append("")
    lines.append(
        f"2σ of a difference between two single runs on these {n_test} test images at their mean accuracy "
        f"({p:.2f}): ±{bench.acc_noise(p, n_test):.3f} (bench.acc_noise)."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> dict:
    bench = load_bench()
    parser = argparse.ArgumentParser(
        prog="python benchmarks/ablation.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data", default=str(bench.DEFAULT_DATA), help="CIFAR-10 as ImageFolder")
    parser.add_argument(
        "--variants", default=",".join(BY_KEY), help=f"comma-separated, of: {', '.join(BY_KEY)}"
    )
    parser.add_argument("--notebook", default="freeze,partial,full", help="notebook strategies ('' for none)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--per-class", type=int, default=Setting.per_class)
    parser.add_argument("--val-per-class", type=int, default=Setting.val_per_class)
    parser.add_argument("--test-per-class", type=int, default=Setting.test_per_class)
    parser.add_argument("--size", type=int, default=Setting.size)
    parser.add_argument("--epochs", type=int, default=Setting.epochs)
    parser.add_argument("--batch-size", type=int, default=Setting.batch_size)
    parser.add_argument("--out", help="JSON written after every run; the table beside it as .md")
    parser.add_argument("--resume", action="store_true", help="keep --out's runs, run only the missing ones")
    args = parser.parse_args(argv)

    unknown = [k for k in args.variants.split(",") if k and k not in BY_KEY]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(BY_KEY)}")
    s = Setting(
        data=args.data,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    out = Path(args.out) if args.out else None
    report = None
    if args.resume and out is not None and out.exists():
        report = json.loads(out.read_text())
        if report["setting"] != dataclasses.asdict(s):
            raise SystemExit(
                f"--resume: {out} was measured with {report['setting']}, not {dataclasses.asdict(s)}"
            )
    started = time.perf_counter()
    report = run_ablation(
        s,
        [BY_KEY[k] for k in args.variants.split(",") if k],
        [int(x) for x in args.seeds.split(",")],
        [x for x in args.notebook.split(",") if x],
        out,
        report,
    )
    report["command"] = " ".join(["python benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)])
    report["wall_s"] = report.get("wall_s", 0) + time.perf_counter() - started
    text = table(report)
    print("\n" + text)
    if out is not None:
        out.write_text(json.dumps(report, indent=2, default=str))
        out.with_suffix(".md").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
