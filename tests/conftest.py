"""Shared test helpers: generated image folders (so tests never depend on downloads), ../shared/data, a
tiny backbone for tests of mechanics, one finished run shared by the tests that only read it, and the
command line run in this process."""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tlbench.config.schema import DataConfig, parse

REPO = Path(__file__).resolve().parents[1]


def import_script(name: str):
    """benchmarks/<name>.py, imported from the checkout (it is not part of the installed package); the
    caller removes it from sys.modules when done."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


SHARED_DATA = REPO.parent / "shared" / "data"
# Distinct colours per class, so a small network can actually learn the generated data.
CLASS_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]


def write_images(folder: Path, colour, count: int, size=(40, 32), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        noise = rng.integers(-30, 30, size=(size[1], size[0], 3))
        pixels = np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def make_image_folder(
    root: Path, classes=("cat", "dog"), per_split: dict[str, int] | None = None, size=(40, 32)
) -> Path:
    """<root>/<split>/<class>/img_NNN.jpg; per_split=None writes a single folder of classes (no splits)."""
    for c, name in enumerate(classes):
        if per_split is None:
            write_images(root / name, CLASS_COLOURS[c % 4], 10, size, seed=c)
        else:
            for s, (split, count) in enumerate(per_split.items()):
                write_images(root / split / name, CLASS_COLOURS[c % 4], count, size, seed=10 * c + s)
    return root


# timm's test model: a resnet of 0.4 M parameters (resnet18 has 11 M), with the same stem + 4 stages + head
# (named stage1..stage4). Tests of mechanics use it: a run trains in a second and its checkpoints are a
# few MB instead of 130 MB with the optimizer state.
TINY = "timm/test_resnet"


def small(root: Path, backbone: str | None = TINY) -> list[str]:
    """Overrides that make any config cheap on a CPU: generated data, 32 px, random init, no workers, and the
    tiny backbone (backbone=None keeps the config's own, for tests of a named backbone)."""
    return [
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=8",
        *([f"backbone.name={backbone}"] if backbone else []),
        "backbone.weights=null",
    ]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", per_split={"train": 12, "val": 4})


@pytest.fixture(autouse=True, scope="session")
def decode_cache(tmp_path_factory) -> Path:
    """Decoded images and bad-image checks go to a temporary folder, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("tlbench-cache")
    os.environ["TLBENCH_CACHE_DIR"] = str(folder)
    return folder


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not found (the real-image tests need ../shared/data beside the repo)")
    return path


GRAY_PRESET = {"mean": [0.5], "std": [0.25], "resize_size": 40, "crop_size": 32, "interpolation": "bilinear"}


def save_untrained_checkpoint(path: Path, class_names: list[str]) -> Path:
    """A random-init 1-channel resnet18 saved the way a run saves its checkpoints (no training needed)."""
    import lightning as L

    from tlbench.models.module import TransferModule

    model = TransferModule(
        backbone={"name": "resnet18", "weights": None},
        num_classes=len(class_names),
        in_chans=1,
        class_names=class_names,
        preset=GRAY_PRESET,
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


class Interrupted(RuntimeError):
    """Stands for a kill: raised inside a run, it leaves the checkpoints the run had written."""


def train_until_killed(overrides: list[str], run_dir: Path, epoch: int, monkeypatch) -> None:
    """Run tlbench.run.train.train and stop it as epoch `epoch` starts (after epoch-1's checkpoints)."""
    from tlbench.run.cost import RunCost
    from tlbench.run.train import compose_config, train

    def stop(self, trainer, pl_module):
        if trainer.current_epoch == epoch:
            raise Interrupted("killed")

    with monkeypatch.context() as patch:
        patch.setattr(RunCost, "on_train_epoch_start", stop, raising=False)
        with pytest.raises(Interrupted):
            train(compose_config(overrides), run_dir)


def data_config(root: Path | str | None, **values) -> DataConfig:
    """The data group as `data=imagefolder data.root=<root>` sets it (conf/data/imagefolder.yaml: the one
    place its defaults live), `values` on top, checked by the schema as a run's config is."""
    defaults = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "imagefolder.yaml"))
    return parse(DataConfig, {**defaults, "root": None if root is None else str(root), **values}, "data.")


@dataclass
class FinishedRun:
    images: Path
    overrides: list[str]
    run_dir: Path
    results: dict


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> FinishedRun:
    """One complete one-epoch run, trained once per session; read it, or copy it (`run_copy`) to change it."""
    from tlbench.run.train import compose_config, train

    root = tmp_path_factory.mktemp("finished")
    images = make_image_folder(root / "images", per_split={"train": 8, "val": 4})
    overrides = [*small(images), "trainer.enable_progress_bar=false", "logger=none", "trainer.max_epochs=1"]
    results = train(compose_config(overrides), root / "run")
    return FinishedRun(images, overrides, root / "run", results)


@pytest.fixture
def run_copy(finished_run: FinishedRun, tmp_path: Path) -> Path:
    """A copy of the shared finished run that a test may move, replace or re-run."""
    return Path(shutil.copytree(finished_run.run_dir, tmp_path / "run"))


@dataclass
class Ran:
    returncode: int
    stdout: str  # print()ed lines, and the tlbench log (where `python -m` writes it, through Hydra)
    stderr: str


def run_entry(main, name: str, args: tuple[str, ...], capsys, monkeypatch) -> Ran:
    """`python -m <name> <args>` through `main` in this process: the same Hydra parsing, exit status and
    messages, the tlbench log caught (Hydra would configure logging for the whole test process)."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "argv", [name, *args, "hydra/job_logging=none", "hydra/hydra_logging=none"])
    log, text = logging.getLogger("tlbench"), io.StringIO()
    handler, level = logging.StreamHandler(text), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    capsys.readouterr()
    try:
        main()
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    out, err = capsys.readouterr()
    return Ran(status, out + text.getvalue(), err)


@pytest.fixture
def cli(capsys, monkeypatch):
    """`python -m tlbench.train <args>` run in this process — without a new interpreter's imports (seconds
    each). A subprocess stays for what only a subprocess shows: signals."""
    from tlbench.run import train as entry

    def run(*args: str, cwd: Path | None = None) -> Ran:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        return run_entry(entry.main, "tlbench.train", args, capsys, monkeypatch)

    return run


def start_train(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m tlbench.train <args>` as a child process (CPU only), for tests that signal it."""
    return subprocess.Popen(
        [sys.executable, "-m", "tlbench.train", *args],
        cwd=cwd,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "CUDA_VISIBLE_DEVICES": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network and empty weight caches under tmp_path, as on a fresh machine without internet."""
    import socket

    import huggingface_hub

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path
