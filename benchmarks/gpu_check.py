"""`make gpu-check`: every GPU claim of tlbench in one command, on a machine with one CUDA GPU, in 8 minutes.

    make gpu-wheels    # once, where pip reaches PyPI: the wheels a bare GPU machine lacks, into .whl/
    make gpu-check     # on the GPU machine, .whl/ beside it: outputs/gpu_check/gpu_check.{json,md}

Its steps, each time-boxed, the one that decides optim.cuda_graph's default first:
  install  what the machine lacks of tlbench's imports (a bare PyTorch machine: hydra-core, omegaconf,
           antlr4-python3-runtime) from .whl/ (`pip install --no-index`, nothing fetched) into .whl/site,
           and tlbench itself from this checkout
  graph    optim.cuda_graph: on ResNet-18 at batch 64, 224 px, the replayed step against the eager one in
           fp32 and bf16 (gradients and BatchNorm statistics equal to a tolerance, step-time ratio), and a
           short fit of each through tlbench (validation losses equal); with its verdict on the default
  tests    the `gpu`-marked tests
  bench    `make bench` at full size (benchmarks/bench.py), graphed full fine-tuning beside eager
The JSON and the markdown are rewritten after every step, so a step that fails or runs out of time is
recorded as such and the others still run. Without a CUDA device nothing is measured: it says so, exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
SITE = WHEELS / "site"
TOTAL_S = 470  # 8 minutes, less the time to start Python and write the report
# What tlbench, its tests and the bench import → the distribution that provides it.
IMPORTS = {
    "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "yaml": "PyYAML",
    "lightning": "lightning", "lightning_utilities": "lightning-utilities", "torchmetrics": "torchmetrics",
    "timm": "timm", "matplotlib": "matplotlib", "scipy": "scipy", "pytest": "pytest",
}  # fmt: skip
# Always from .whl/ when carried: what builds tlbench there (its pyproject asks for setuptools >= 68).
BUILD = ("setuptools",)
GRAD_TOLERANCE = {"32-true": 1e-3, "bf16-mixed": 1e-2}  # largest relative L2 difference of any tensor
FIT_TOLERANCE = 0.05  # relative difference of the short fits' validation losses
FASTER = 0.9  # a graphed step must take at most this share of the eager one's time to be the default
MIN_STEP_S = 10  # a step left less time than this is skipped, and recorded so
# CIFAR-10 as an ImageFolder for the bench, where --data names none: a copy carried inside the checkout
# (a GPU machine gets the checkout only), else bench.py's default beside it.
DATA = (REPO / ".devcache" / "cifar10", REPO / "shared" / "data" / "cifar10")


@dataclass
class Step:
    name: str
    cap_s: int  # at most this long
    floor_s: int  # kept free for it by the steps before


STEPS = (Step("install", 90, 30), Step("graph", 120, 60), Step("tests", 150, 60), Step("bench", 470, 180))


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def carried_wheels(folder: Path = WHEELS) -> dict[str, Path]:
    """Distribution (normalised) → its wheel in .whl/."""
    return {normalise(p.name.split("-")[0]): p for p in sorted(folder.glob("*.whl"))}


def missing_imports() -> list[str]:
    import importlib.util

    return [module for module in IMPORTS if importlib.util.find_spec(module) is None]


def install_commands(missing: list[str], wheels: dict[str, Path]) -> list[list[str]]:
    """pip, offline, into .whl/site: the carried wheel of each missing import (their own needs are the
    other entries of IMPORTS, or already on a PyTorch machine) and of BUILD; then tlbench from this
    checkout, built with that setuptools (.whl/site is on PYTHONPATH)."""
    names = [normalise(IMPORTS[m]) for m in missing] + [normalise(b) for b in BUILD]
    chosen = sorted({str(wheels[n]) for n in names if n in wheels})
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--upgrade",
    ]
    pip += ["--target", str(SITE)]
    return [pip + chosen] * bool(chosen) + [[*pip, "--no-build-isolation", str(REPO)]]


def gpu_test_files() -> list[str]:
    return sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.gpu" in p.read_text()
    )


def commands(out: Path, data: str | None) -> dict[str, list[list[str]]]:
    py = sys.executable
    bench = [py, "benchmarks/bench.py", f"--out={out / 'bench.json'}", *([f"--data={data}"] if data else [])]
    tests = [
        py,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={out / 'tests.xml'}",
    ]
    return {
        "install": install_commands(missing_imports(), carried_wheels()),
        "graph": [[py, __file__, "--graph", f"--out={out}"]],
        "tests": [[*tests, *gpu_test_files()]],
        "bench": [bench],
    }


def run_step(name: str, commands: list[list[str]], timeout_s: float, log: Path) -> dict:
    """Run one step's commands, in order, within its time limit; what they print goes to the log, the last
    lines to the record."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")])),
    }
    env["PYTHONUNBUFFERED"] = "1"
    started = time.perf_counter()
    status = "passed"
    with log.open("a") as handle:
        handle.write(f"\n===== {name}\n")
        for command in commands:
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            left = timeout_s - (time.perf_counter() - started)
            try:
                done = subprocess.run(
                    command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=max(left, 1)
                )
            except subprocess.TimeoutExpired:
                status = f"timed out after {timeout_s:.0f} s"
                break
            if done.returncode != 0:
                status = f"failed (exit {done.returncode})"
                break
    tail = log.read_text(errors="replace").rsplit(f"===== {name}\n", 1)[-1][-3000:]
    return {"status": status, "seconds": round(time.perf_counter() - started, 1), "log_tail": tail}


def tests_summary(xml: Path) -> dict:
    """Counts and the failed tests' names from pytest's JUnit XML."""
    if not xml.exists():
        return {}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "failed": failed}


# ------------------------------------------------------------------ the graph step (its own process)
def compare_steps(precision: str) -> dict:
    """The replayed step against the eager one from the same state: gradients and BatchNorm statistics
    after the capturing step and a replay, then the time of a whole training step (fused AdamW) each."""
    import torch
    import torch.nn.functional as F

    from tlbench.models.module import TransferModule
    from tlbench.models.steps import GraphedForwardBackward

    torch.manual_seed(0)
    strategy = {"name": "full", "bn": "train"}
    module = TransferModule(backbone={"name": "resnet18", "weights": None}, num_classes=10, strategy=strategy)
    net = module.net.cuda().to(memory_format=torch.channels_last).train()
    x = torch.randn(64, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device="cuda")
    bf16 = precision == "bf16-mixed"
    graphed = GraphedForwardBackward(net)
    start = {k: v.clone() for k, v in net.state_dict().items()}

    def after_step(forward) -> dict:
        net.load_state_dict(start)
        net.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            F.cross_entropy(forward(x), y).backward()
        grads = {n: p.grad.float().clone() for n, p in net.named_parameters() if p.grad is not None}
        return grads | {n: b.float().clone() for n, b in net.named_buffers()}

    eager = after_step(net)
    worst = 0.0
    for _ in range(2):  # the step that captures, then a replay
        replayed = after_step(graphed)
        for name, value in eager.items():
            scale = value.norm().item() or 1.0
            worst = max(worst, (replayed[name] - value).norm().item() / scale)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)

    def step_time(forward, steps: int = 30) -> float:
        def train_step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(forward(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(5):
            train_step()
        torch.cuda.synchronize()
        begun = time.perf_counter()
        for _ in range(steps):
            train_step()
        torch.cuda.synchronize()
        return (time.perf_counter() - begun) / steps * 1000

    eager_ms, graphed_ms = step_time(net), step_time(graphed)
    return {
        "max_relative_difference": worst,
        "tolerance": GRAD_TOLERANCE[precision],
        "gradients_equal": worst <= GRAD_TOLERANCE[precision],
        "capture_error": graphed.error,
        "eager_step_ms": eager_ms,
        "graphed_step_ms": graphed_ms,
        "step_time_ratio": graphed_ms / eager_ms,
    }


def short_fit(folder: Path) -> dict:
    """Three epochs of tlbench's product path, eager and graphed, on generated images (4 colours)."""
    import numpy as np
    from PIL import Image

    from tlbench.run.train import run

    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("val", 16), ("test", 16)):
        for c, colour in enumerate([(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]):
            (folder / "images" / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.integers(-60, 60, (64, 64, 3)), 0, 255).astype(
                    np.uint8
                )
                Image.fromarray(pixels).save(folder / "images" / split / f"c{c}" / f"{i}.png")
    base = [
        "data=imagefolder", f"data.root={folder / 'images'}", "data.image_size=64", "data.batch_size=16",
        "data.num_workers=0", "backbone=resnet18", "backbone.weights=null", "strategy=full",
        "strategy.bn=train", "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger=none",
        "seed=0",
    ]  # fmt: skip
    fits = {}
    for name, flag in (("eager", "false"), ("graphed", "true")):
        results = run([*base, f"optim.cuda_graph={flag}"], run_dir=folder / name)
        keys = ("cuda_graph", "cuda_graph_error", "precision", "train_images_per_s")
        fits[name] = {"val_loss": results["metrics"]["val/loss"], **{k: results.get(k) for k in keys}}
    a, b = fits["eager"]["val_loss"], fits["graphed"]["val_loss"]
    difference = abs(a - b) / max(abs(a), 1e-12)
    return {**fits, "relative_difference": difference, "losses_equal": difference <= FIT_TOLERANCE}


def verdict(graph: dict) -> dict:
    """The default optim.cuda_graph should have, from the graph step's numbers."""
    equal = all(graph[p]["gradients_equal"] for p in GRAD_TOLERANCE) and graph["short_fit"]["losses_equal"]
    ratio = graph["bf16-mixed"]["step_time_ratio"]
    default = "auto" if equal and ratio <= FASTER else "false"
    why = (
        f"gradients {'equal' if equal else 'NOT equal'} to tolerance and short fits "
        f"{'equal' if graph['short_fit']['losses_equal'] else 'NOT equal'}; a bf16 graphed step takes "
        f"{ratio:.2f}× the eager one's time (≤ {FASTER} needed)"
    )
    return {"cuda_graph_default": default, "because": why}


def graph_step(out: Path) -> None:
    graph = {
        "model": "resnet18, random init, strategy full with BatchNorm training",
        "batch": 64,
        "size": 224,
    }
    for precision in GRAD_TOLERANCE:
        graph[precision] = compare_steps(precision)
    with tempfile.TemporaryDirectory(prefix="tlbench-gpu-check-") as tmp:
        graph["short_fit"] = short_fit(Path(tmp))
    graph["verdict"] = verdict(graph)
    (out / "graph.json").write_text(json.dumps(graph, indent=2))


# ---------------------------------------------------------------------------------------- the report
def markdown(report: dict) -> str:
    lines = [f"# make gpu-check: {report['device']}", "", f"`{report['command']}`, {report['when']}", ""]
    lines += ["| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {s['status']} | {s['seconds']} |" for name, s in report["steps"].items()]
    graph = report.get("graph")
    if graph:
        lines += ["", f"**optim.cuda_graph default: {graph['verdict']['cuda_graph_default']}** — "
                  f"{graph['verdict']['because']}.", ""]  # fmt: skip
        lines += ["| precision | max rel. difference (tolerance) | equal | eager ms/step | graphed ms/step "
                  "| ratio |", "|---|---:|---|---:|---:|---:|"]  # fmt: skip
        for p in GRAD_TOLERANCE:
            g = graph[p]
            lines.append(
                f"| {p} | {g['max_relative_difference']:.2e} ({g['tolerance']:.0e}) | {g['gradients_equal']} "
                f"| {g['eager_step_ms']:.2f} | {g['graphed_step_ms']:.2f} | {g['step_time_ratio']:.2f} |"
            )
        fit = graph["short_fit"]
        lines += ["", f"Short fit (3 epochs): val loss eager {fit['eager']['val_loss']:.4f}, graphed "
                  f"{fit['graphed']['val_loss']:.4f} (relative difference {fit['relative_difference']:.3f}); "
                  f"graphed run used graphs: {fit['graphed']['cuda_graph']}, capture error: "
                  f"{fit['graphed']['cuda_graph_error']}"]  # fmt: skip
    tests = report.get("tests")
    if tests:
        failed = tests["failures"] + tests["errors"]
        lines += ["", f"gpu tests: {tests['tests']} run, {failed} failed, {tests['skipped']} skipped"]
        lines += [f"- failed: `{name}`" for name in tests["failed"]]
    targets = (report.get("bench") or {}).get("targets")
    if targets:
        lines += ["", "| bench target | measured | met? |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in targets]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


def cuda_device() -> str | None:
    """The GPU's name, or None where torch is missing or sees no CUDA device."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "outputs" / "gpu_check"), help="folder for the results")
    parser.add_argument("--data", help="CIFAR-10 as ImageFolder for the bench (default: bench.py's)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and what would be installed")
    parser.add_argument("--graph", action="store_true", help=argparse.SUPPRESS)  # the graph step's process
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.graph:
        graph_step(out)
        return 0
    planned = commands(out, args.data or next((str(p) for p in DATA if p.is_dir()), None))
    print(f"wheels in {WHEELS}: {', '.join(p.name for p in carried_wheels().values()) or 'none'}")
    print(f"missing imports: {', '.join(missing_imports()) or 'none'}")
    for step in STEPS:
        print(f"{step.name} (≤ {step.cap_s} s): " + " && ".join(" ".join(c) for c in planned[step.name]))
    device = cuda_device()
    if device is None:
        print(
            "no CUDA device: nothing was measured (gpu-check needs one CUDA GPU and torch)", file=sys.stderr
        )
        return 2
    if args.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log = out / "logs.txt"
    log.write_text("")
    deadline = time.monotonic() + TOTAL_S
    report = {"device": device, "command": " ".join(["benchmarks/gpu_check.py", *(argv or sys.argv[1:])])}
    report |= {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "missing_before_install": missing_imports()}
    report["steps"] = {}
    for i, step in enumerate(STEPS):
        later = sum(s.floor_s for s in STEPS[i + 1 :])
        budget = min(step.cap_s, deadline - time.monotonic() - later)
        if budget < MIN_STEP_S:
            report["steps"][step.name] = {"status": "skipped: out of time", "seconds": 0}
        else:
            report["steps"][step.name] = run_step(step.name, planned[step.name], budget, log)
        for name, path in (("graph", out / "graph.json"), ("bench", out / "bench.json")):
            if step.name == name and path.exists():
                report[name] = json.loads(path.read_text())
        if step.name == "tests":
            report["tests"] = tests_summary(out / "tests.xml")
        write_report(report, out)
    print((out / "gpu_check.md").read_text())
    return 0 if all(s["status"] == "passed" for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
