"""benchmarks/gpu_check.py (`make gpu-check`): what can be checked without a GPU — that it refuses to
pretend without one, installs only what is missing, and records every step's outcome, failures too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, import_script


@pytest.fixture(scope="module")
def gpu_check():
    yield import_script("gpu_check")
    del sys.modules["gpu_check"]


NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("flags", [[], ["--dry-run"]])
def test_without_a_cuda_device_it_measures_nothing_and_exits_2(flags, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", f"--out={out}", *flags],
        cwd=REPO, env=NO_GPU, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no CUDA device: nothing was measured" in done.stderr
    assert "bench (≤" in done.stdout and "benchmarks/bench.py" in done.stdout  # the plan it would run
    assert not out.exists()


def test_make_gpu_check_is_the_script(tmp_path):
    done = subprocess.run(
        ["make", "gpu-check", f"PYTHON={sys.executable}", f"GPU_CHECK_ARGS=--out={tmp_path / 'out'}"],
        cwd=REPO, env=NO_GPU, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "no CUDA device" in done.stderr


def test_only_missing_imports_are_installed_from_the_carried_wheels(gpu_check, tmp_path):
    for name in ("hydra_core-1.3.8", "omegaconf-2.3.1", "timm-1.0.31", "setuptools-75.3.0"):
        (tmp_path / f"{name}-py3-none-any.whl").touch()
    wheels = gpu_check.carried_wheels(tmp_path)
    first, second = gpu_check.install_commands(["hydra", "omegaconf", "antlr4"], wheels)
    assert "--no-index" in first and "--no-deps" in first
    assert [p.split("/")[-1].split("-")[0] for p in first if p.endswith(".whl")] == [
        "hydra_core", "omegaconf", "setuptools",
    ]  # fmt: skip  # timm is there already; antlr4 is not carried (the report lists it as missing)
    assert second[-2:] == ["--no-build-isolation", str(REPO)], "tlbench itself, from this checkout"


@pytest.mark.parametrize(
    "grads_equal, fit_equal, ratio, default",
    [
        (True, True, 0.6, "auto"),
        (True, True, 0.95, "false"),
        (False, True, 0.5, "false"),
        (True, False, 0.5, "false"),
    ],
)
def test_the_verdict_asks_for_equal_steps_and_a_faster_one(gpu_check, grads_equal, fit_equal, ratio, default):
    graph = {p: {"gradients_equal": grads_equal, "step_time_ratio": ratio} for p in gpu_check.GRAD_TOLERANCE}
    graph["short_fit"] = {"losses_equal": fit_equal}
    assert gpu_check.verdict(graph)["cuda_graph_default"] == default


def test_every_step_is_recorded_also_when_it_fails_or_runs_out_of_time(gpu_check, tmp_path, monkeypatch):
    py = sys.executable
    fake = {
        "install": [[py, "-c", "print('installed')"]],
        "graph": [[py, "-c", "import sys; print('capture broke'); sys.exit(3)"]],
        "tests": [[py, "-c", "pass"], [py, "-c", "raise SystemExit(4)"]],
        "bench": [[py, "-c", "import time; time.sleep(30)"]],
    }
    Step = gpu_check.Step
    monkeypatch.setattr(gpu_check, "cuda_device", lambda: "Fake GPU")
    monkeypatch.setattr(gpu_check, "commands", lambda out, data: fake)
    monkeypatch.setattr(gpu_check, "STEPS", tuple(Step(n, 20 if n != "bench" else 2, 0) for n in fake))
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1)
    assert gpu_check.main([f"--out={tmp_path}"]) == 1

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {name: step["status"] for name, step in report["steps"].items()}
    assert status == {
        "install": "passed",
        "graph": "failed (exit 3)",
        "tests": "failed (exit 4)",
        "bench": "timed out after 2 s",
    }
    assert "capture broke" in report["steps"]["graph"]["log_tail"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("# make gpu-check: Fake GPU")
    assert "| graph | failed (exit 3) |" in table and "| bench | timed out after 2 s |" in table


def test_the_markdown_shows_the_verdict_the_comparison_and_the_failed_tests(gpu_check, tmp_path):
    step = {"gradients_equal": True, "max_relative_difference": 2e-6, "tolerance": 1e-3}
    step |= {"eager_step_ms": 20.0, "graphed_step_ms": 12.0, "step_time_ratio": 0.6}
    fit = {
        "eager": {"val_loss": 0.5},
        "graphed": {"val_loss": 0.51, "cuda_graph": True, "cuda_graph_error": None},
    }
    graph = {p: step for p in gpu_check.GRAD_TOLERANCE} | {"short_fit": {**fit, "losses_equal": True}}
    graph["short_fit"]["relative_difference"] = 0.02
    graph["verdict"] = gpu_check.verdict(graph)
    (tmp_path / "t.py").write_text("def test_ok():\n    pass\n\ndef test_broken():\n    assert False\n")
    pytest = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={tmp_path / 'x.xml'}",
    ]
    subprocess.run([*pytest, str(tmp_path / "t.py")], cwd=tmp_path, capture_output=True, timeout=120)
    report = {"device": "Fake GPU", "command": "gpu_check.py", "when": "now", "steps": {}, "graph": graph}
    report["tests"] = gpu_check.tests_summary(tmp_path / "x.xml")
    assert report["tests"]["tests"] == 2 and report["tests"]["failures"] == 1
    table = gpu_check.markdown(report)
    assert "**optim.cuda_graph default: auto**" in table
    assert "| bf16-mixed | 2.00e-06 (1e-03) | True | 20.00 | 12.00 | 0.60 |" in table
    assert "gpu tests: 2 run, 1 failed, 0 skipped" in table and "test_broken" in table
