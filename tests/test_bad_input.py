"""Bad input as a new user meets it: mistyped config values, files that are not checkpoints, and every kind
of image file a real folder holds. Each case ends in one clear line (naming the key or file and the fix)
or is handled; none ends in a traceback, and none touches a run folder before the config is known good."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import data_config, make_image_folder, save_untrained_checkpoint, small
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.decode import (
    _CACHE_FORMAT,
    cache_file,
    decode_to_uint8,
    file_fingerprint,
    image_sizes,
    save_cached,
)
from tlbench.data.images import read_image
from tlbench.data.sources import DataError
from tlbench.models.backbones import Preset, build_backbone
from tlbench.run.checks import ConfigError, check_against_data, check_config
from tlbench.run.train import compose_config, train
from tlbench.serve.export import main as export_main
from tlbench.serve.predict import main as predict_main

# ------------------------------------------------------------------------------------------ config values
# (override, key the message must name, bad value the message must quote)
BAD_VALUES = [
    ("trainer.max_epochs=ten", "trainer.max_epochs", "ten"),
    ("trainer.max_epochs=0", "trainer.max_epochs", "0"),
    ("strategy.head_lr=abc", "strategy.head_lr", "abc"),
    ("strategy.head_lr=-0.001", "strategy.head_lr", "-0.001"),
    ("strategy.backbone_lr=-1e-4", "strategy.backbone_lr", "-0.0001"),
    ("data.batch_size=0", "data.batch_size", "0"),
    ("data.batch_size=8.5", "data.batch_size", "8.5"),
    ("data.val_fraction=1.5", "data.val_fraction", "1.5"),
    ("data.val_fraction=0", "data.val_fraction", "0"),
    ("strategy.unfreeze_every=0", "strategy.unfreeze_every", "0"),
    ("strategy.lp_epochs=-1", "strategy.lp_epochs", "-1"),
    ("data.balance=oversample", "data.balance", "oversample"),
    ("data.threshold=high", "data.threshold", "high"),
    ("data.threshold=1.5", "data.threshold", "1.5"),
    ("data.test_fraction=1.2", "data.test_fraction", "1.2"),
    ("data.train_crop_scale=[1.0,0.08]", "data.train_crop_scale", "[1.0, 0.08]"),
    ("data.train_crop_scale=[0.0,1.0]", "data.train_crop_scale", "[0.0, 1.0]"),
    ("data.train_crop_scale=[0.5,1.5]", "data.train_crop_scale", "[0.5, 1.5]"),
    ("data.train_crop_scale=0.5", "data.train_crop_scale", "0.5"),
    ("strategy.name=partal", "strategy.name", "partal"),
    ("optim.name=adam", "optim.name", "adam"),
    ("optim.scheduler=linear", "optim.scheduler", "linear"),
    ("strategy.bn=frozen", "strategy.bn", "frozen"),
    ("data.on_bad_image=ignore", "data.on_bad_image", "ignore"),
    ("data.pipeline=gpu", "data.pipeline", "gpu"),
    ("logger.name=wandb", "logger.name", "wandb"),
    ("data.source=imagenet", "data.source", "imagenet"),
    ("data.in_chans=2", "data.in_chans", "2"),
    ("data.image_size=4", "data.image_size", "4"),
    ("data.image_size=big", "data.image_size", "big"),
    ("data.positive_class=-1", "data.positive_class", "-1"),
    ("data.positive_class=one", "data.positive_class", "one"),
    ("seed=-1", "seed", "-1"),
    ("seed=abc", "seed", "abc"),
    ("data.per_class=0", "data.per_class", "0"),
    ("data.val_per_class=0", "data.val_per_class", "0"),
    ("data.val_per_class=some", "data.val_per_class", "some"),
    ("data.test_per_class=0", "data.test_per_class", "0"),
    ("data.folds=1", "data.folds", "1"),
    ("data.fold=3", "data.fold", "3"),
    ("data.eval_batch_size=0", "data.eval_batch_size", "0"),
    ("data.num_workers=-1", "data.num_workers", "-1"),
    ("data.memory_max_gb=0", "data.memory_max_gb", "0"),
    ("data.hflip=maybe", "data.hflip", "maybe"),
    ("data.download=yes", "data.download", "yes"),
    ("data.root=/no/such/folder", "data.root", "/no/such/folder"),
    ("strategy.layer_decay=1.5", "strategy.layer_decay", "1.5"),
    ("strategy.train_stages=-1", "strategy.train_stages", "-1"),
    ("strategy.train_input_conv=sometimes", "strategy.train_input_conv", "sometimes"),
    ("strategy.cache_features=sometimes", "strategy.cache_features", "sometimes"),
    ("optim.weight_decay=-1", "optim.weight_decay", "-1"),
    ("optim.momentum=1.5", "optim.momentum", "1.5"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs", "-1"),
    ("optim.step_epochs=0", "optim.step_epochs", "0"),
    ("optim.gamma=0", "optim.gamma", "0"),
    ("optim.label_smoothing=1.0", "optim.label_smoothing", "1.0"),
    ("optim.cuda_graph=maybe", "optim.cuda_graph", "maybe"),
    ("trainer.precision=8-mixed", "trainer.precision", "8-mixed"),
    ("trainer.accelerator=quantum", "trainer.accelerator", "quantum"),
    ("trainer.devices=0", "trainer.devices", "0"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps", "0"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val", "-1"),
    ("trainer.limit_train_batches=2.5", "trainer.limit_train_batches", "2.5"),
    ("trainer.num_sanity_val_steps=-2", "trainer.num_sanity_val_steps", "-2"),
    ("trainer.fast_dev_run=-1", "trainer.fast_dev_run", "-1"),
    ("trainer.deterministic=always", "trainer.deterministic", "always"),
    ("trainer.monitor=val/accuracy", "trainer.monitor", "val/accuracy"),
    ("backbone.name=resnet19", "backbone.name", "resnet19"),
    ("backbone.weights=NOPE", "backbone.weights", "NOPE"),
    ("backbone.in_chans_mode=avg", "backbone.in_chans_mode", "avg"),
    ("+backbone.checkpoint=/no/such/weights.pth", "backbone.checkpoint", "/no/such/weights.pth"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", per_split={"train": 3, "val": 1})


def test_the_good_config_passes(folder):
    check_config(compose_config(small(folder)))
    check_config(
        compose_config([*small(folder), "strategy=gradual", "optim=sgd", "trainer=cpu", "logger=csv"])
    )


@pytest.mark.parametrize(("override", "key", "value"), BAD_VALUES, ids=[row[0] for row in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_key_and_value(folder, override, key, value):
    strategy = ["strategy=gradual"] if key == "strategy.unfreeze_every" else []
    # The config's torchvision resnet18: a weights tag is a torchvision notion (timm takes any truthy value).
    cfg = compose_config([*small(folder, backbone=None), *strategy, override])
    with pytest.raises(ConfigError) as raised:
        check_config(cfg)
    message = str(raised.value)
    assert key in message and value in message and "\n" not in message, message


@pytest.mark.parametrize(
    ("overrides", "num_classes", "key"),
    [
        (["data.positive_class=2"], 2, "data.positive_class"),
        (["data.positive_class=5"], 3, "data.positive_class"),
        (["trainer.monitor=val/auroc"], 3, "trainer.monitor"),
        (["trainer.monitor=val/top5"], 4, "trainer.monitor"),
    ],
)
def test_values_that_depend_on_the_classes_are_checked_against_them(folder, overrides, num_classes, key):
    cfg = compose_config([*small(folder), *overrides])
    run = check_config(cfg)  # fine until the number of classes is known
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_against_data(run, num_classes)


def test_positive_class_out_of_range_stops_before_a_network_is_built(folder, tmp_path, monkeypatch):
    import tlbench.run.train as train_module

    built = []
    monkeypatch.setattr(train_module, "build_module", lambda *args: built.append(args))
    with pytest.raises(ConfigError, match="data.positive_class=2"):
        train(compose_config([*small(folder), "data.positive_class=2"]), tmp_path / "run")
    assert built == []


def test_a_bad_value_leaves_the_run_folder_as_it_was(folder, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        train(compose_config([*small(folder), "trainer.max_epochs=ten"]), run_dir)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_cli_prints_one_error_line_and_keeps_the_run_folder(folder, tmp_path, cli):
    """force=true: the check comes before the folder is cleared, and reads like every other user error."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    overrides = [*small(folder), "trainer=cpu", "logger=none", "strategy.head_lr=abc", "force=true"]
    done = cli(*overrides, f"hydra.run.dir={run_dir}")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "strategy.head_lr" in errors[0] and "abc" in errors[0], done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"weights"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+data.bogus=1", "data.bogus"),  # a key the schema does not know
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.root=/no/such/folder", "data.root"),
        ("backbone.name=no_such_net", "no_such_net"),
        ("strategy=gradual strategy.unfreeze_every=null", "strategy.unfreeze_every"),
    ],
)
def test_a_refused_command_leaves_no_run_folder(folder, tmp_path, cli, override, key):
    done = cli(*small(folder), *override.split(), cwd=tmp_path)  # the default outputs/runs/<time>_… folder
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], done.stderr
    assert "traceback in" not in done.stderr  # nothing left to look in
    assert list((tmp_path / "outputs" / "runs").glob("*")) == []


def test_a_refused_run_in_a_folder_with_other_files_keeps_them(folder, tmp_path, cli):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    done = cli(*small(folder), "data.val_fraction=1.5", f"hydra.run.dir={run_dir}")
    assert done.returncode == 1 and (run_dir / "notes.txt").read_text() == "mine"
    assert (run_dir / "error.txt").exists() and "traceback in" in done.stderr


# ------------------------------------------------------------------------------------------ checkpoint files
def truncated_checkpoint(tmp_path: Path) -> Path:
    whole = save_untrained_checkpoint(tmp_path / "whole.ckpt", ["cat", "dog"]).read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.ckpt"
    path.write_text("these are not weights\n")
    return path


def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    return path


def missing_file(tmp_path: Path) -> Path:
    return tmp_path / "missing.ckpt"


def folder_path(tmp_path: Path) -> Path:
    path = tmp_path / "run_folder"
    path.mkdir()
    return path


def state_dict_of_another_network(tmp_path: Path) -> Path:
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def pickled_object(tmp_path: Path) -> Path:
    """A whole pickled module (torch.save(model)): weights_only=True refuses to run its code."""
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    return path


BAD_FILES = [truncated_checkpoint, text_file, empty_file, missing_file, folder_path, pickled_object]


def assert_one_line_naming(message: str, path: Path) -> None:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], message
    assert "Traceback" not in message


@pytest.mark.parametrize("make", [*BAD_FILES, state_dict_of_another_network], ids=lambda f: f.__name__)
def test_predict_names_a_file_that_is_not_a_checkpoint(make, tmp_path, capsys):
    path = make(tmp_path)
    image = make_image_folder(tmp_path / "images", per_split={"train": 1}) / "train" / "cat" / "img_000.jpg"
    assert predict_main([str(path), str(image)]) == 1
    assert_one_line_naming(capsys.readouterr().err, path)


@pytest.mark.parametrize("make", [*BAD_FILES, state_dict_of_another_network], ids=lambda f: f.__name__)
def test_export_names_a_file_that_is_not_a_checkpoint(make, tmp_path, capsys):
    path = make(tmp_path)
    assert export_main([str(path), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 1
    assert_one_line_naming(capsys.readouterr().err, path)


def checkpoint_with_other_classes(tmp_path: Path) -> Path:
    """A tlbench checkpoint whose saved head disagrees with its own hyper-parameters (edited, or mixed up)."""
    path = save_untrained_checkpoint(tmp_path / "model.ckpt", ["cat", "dog"])
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["num_classes"] = 5
    checkpoint["hyper_parameters"]["class_names"] = list("abcde")
    torch.save(checkpoint, path)
    return path


def test_predict_names_a_checkpoint_whose_weights_do_not_fit(tmp_path, capsys):
    path = checkpoint_with_other_classes(tmp_path)
    image = make_image_folder(tmp_path / "images", per_split={"train": 1}) / "train" / "cat" / "img_000.jpg"
    assert predict_main([str(path), str(image)]) == 1
    assert_one_line_naming(capsys.readouterr().err, path)


def lite0_state_dict_with_another_shape(tmp_path: Path) -> Path:
    """An efficientnet_lite0-shaped state dict with one backbone tensor of another shape (another width)."""
    model = build_backbone("efficientnet_lite0", weights=None, num_classes=2)
    state = {k.removeprefix("trunk."): v for k, v in model.net.state_dict().items() if k.startswith("trunk.")}
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[key] = torch.zeros(1, *state[key].shape[1:])
    path = tmp_path / "narrow.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "make",
    [*BAD_FILES, state_dict_of_another_network, lite0_state_dict_with_another_shape],
    ids=lambda f: f.__name__,
)
def test_backbone_checkpoint_names_the_file_and_the_fix(make, tmp_path):
    path = make(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        build_backbone("efficientnet_lite0", weights=None, num_classes=2, checkpoint=path)
    message = str(raised.value)
    assert f"backbone.checkpoint={path}" in message and "\n" not in message, message


# ---------------------------------------------------------------------------------------------- EXIF
def write_rotated_jpeg(path: Path, size=(48, 24)) -> Path:
    """A JPEG stored `size` (w, h) with EXIF Orientation=6: a viewer shows it turned 90° (h × w). Its left
    half is dark, so after the turn the dark half is at the top."""
    pixels = np.full((size[1], size[0], 3), 230, dtype=np.uint8)
    pixels[:, : size[0] // 2] = 20
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_an_exif_rotated_photo_is_read_as_a_viewer_shows_it(tmp_path):
    path = write_rotated_jpeg(tmp_path / "photo.jpg")
    image = read_image(path)
    assert image.size == (24, 48)  # transposed: 24 wide, 48 high
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels[:24].mean() < 100 < pixels[24:].mean()  # orientation 6: the stored left is now the top
    assert image_sizes([path]) == {(24, 48)}


def test_the_decode_cache_stores_upright_images_and_ignores_older_caches(tmp_path):
    path = write_rotated_jpeg(tmp_path / "photo.jpg", size=(64, 32))
    items, cache = [str(path)], tmp_path / "cache"
    # What an older tlbench left: the same file list and settings, decoded without the EXIF turn.
    for version in range(1, _CACHE_FORMAT):
        stale = cache_file(cache, items, f"v{version}|32|32|1|bilinear", "uint8")
        save_cached(stale, {"images": torch.zeros(1, 1, 32, 32, dtype=torch.uint8), "bad": {},
                            "fingerprint": file_fingerprint(items)})  # fmt: skip
    first = decode_to_uint8(items, 32, in_chans=1, cache_dir=cache).images
    again = decode_to_uint8(items, 32, in_chans=1, cache_dir=cache).images
    assert torch.equal(first, again) and first.float().mean() > 50  # not the stale zeros
    top, bottom = first[0, 0, :8].float().mean(), first[0, 0, -8:].float().mean()
    assert top < 100 < bottom  # dark half on top: turned as a viewer turns it


def test_predict_and_cam_see_the_rotated_photo_upright(tmp_path, capsys):
    checkpoint = save_untrained_checkpoint(tmp_path / "model.ckpt", ["cat", "dog"])
    path = write_rotated_jpeg(tmp_path / "photo.jpg", size=(80, 40))
    from tlbench.serve.predict import load_images, load_model

    model = load_model(checkpoint)
    image = load_images(model, [path])[0, 0]
    assert image[:8].mean() < image[-8:].mean()  # dark half on top
    assert predict_main([str(checkpoint), str(path), "--cam", str(tmp_path / "cam"), "--workers", "0"]) == 0


# ------------------------------------------------------------------------------------------------- images
def jpeg_bytes(mode="RGB", size=(40, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 40, 40) if mode == "RGB" else 128).save(buffer, format="JPEG")
    return buffer.getvalue()


def save(image: Image.Image, name: str, **options):
    def write(folder: Path) -> Path:
        path = folder / name
        image.save(path, **options)
        return path

    return write


def raw(data: bytes, name: str):
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return write


gradient = np.tile(np.linspace(0, 1, 40), (32, 1))
# name → (writer, readable)
IMAGE_KINDS = {
    "truncated_jpeg": (raw(jpeg_bytes()[:300], "truncated.jpg"), False),
    "zero_bytes": (raw(b"", "empty.jpg"), False),
    "text_named_jpg": (raw(b"just some text\n" * 20, "notes.jpg"), False),
    "html_named_png": (raw(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "page.png"), False),
    "palette_gif": (save(Image.new("RGB", (40, 32), (10, 200, 10)).convert("P"), "palette.gif"), True),
    "rgba_png": (save(Image.new("RGBA", (40, 32), (200, 40, 40, 0)), "rgba.png"), True),
    "la_png": (save(Image.new("LA", (40, 32), (90, 128)), "la.png"), True),
    "one_bit_png": (save(Image.fromarray(gradient > 0.5), "bits.png"), True),
    "i16_png": (save(Image.fromarray((gradient * 65535).astype(np.uint16)), "deep16.png"), True),
    # PNG stops at 16 bits: 32-bit integer scans come as TIFF.
    "i32_tiff": (save(Image.fromarray((gradient * 2**20).astype(np.int32)), "deep32.tif"), True),
    "cmyk_jpeg": (raw(jpeg_bytes("CMYK"), "cmyk.jpg"), True),
    "float_tiff": (save(Image.fromarray(gradient.astype(np.float32)), "float.tif"), True),
    "one_pixel": (save(Image.new("RGB", (1, 1), (200, 40, 40)), "dot.png"), True),
    "elongated": (save(Image.new("RGB", (400, 3), (200, 40, 40)), "strip.png"), True),
    "uppercase_extension": (raw(jpeg_bytes(), "PHOTO.JPG"), True),
    "exif_rotated": (lambda folder: write_rotated_jpeg(folder / "rotated.jpg"), True),
}
PRESETS = {
    c: Preset((0.5,) * c, (0.25,) * c, resize_size=40, crop_size=32, interpolation="bilinear") for c in (1, 3)
}


def folder_with(kind: str, root: Path) -> tuple[Path, Path]:
    """Two classes of ordinary JPEGs, plus one file of `kind` among the training images of the first."""
    make_image_folder(root, per_split={"train": 3, "val": 1})
    odd = IMAGE_KINDS[kind][0](root / "train" / "cat")
    return root, odd


def datamodule(root: Path, in_chans: int, pipeline: str, on_bad_image: str = "skip") -> ImageDataModule:
    data = data_config(root, in_chans=in_chans, pipeline=pipeline, num_workers=0, batch_size=8,
                       on_bad_image=on_bad_image, cache_dir=None)  # fmt: skip
    return ImageDataModule(data, PRESETS[in_chans], seed=0)


@pytest.mark.filterwarnings("ignore:skipping 1 unreadable image")
@pytest.mark.parametrize("pipeline", ["memory", "streaming"])
@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize("kind", list(IMAGE_KINDS))
def test_every_kind_of_image_file_is_used_or_listed(kind, in_chans, pipeline, tmp_path):
    root, odd = folder_with(kind, tmp_path / "images")
    readable = IMAGE_KINDS[kind][1]
    data = datamodule(root, in_chans, pipeline)
    data.setup()
    assert data.bad_images.keys() == ({str(odd)} if not readable else set())
    assert (str(odd) in data.data.splits["train"].items) == readable
    seen = 0
    for images, labels in data.train_dataloader():
        assert images.shape[1:] == (in_chans, 32, 32) and images.dtype == torch.float32
        assert torch.isfinite(images).all()
        seen += len(labels)
    assert seen == 6 + readable  # every readable training image, the odd one included when readable


@pytest.mark.parametrize("pipeline", ["memory", "streaming"])
@pytest.mark.parametrize("kind", [k for k, (_, readable) in IMAGE_KINDS.items() if not readable])
def test_on_bad_image_error_names_the_file(kind, pipeline, tmp_path):
    root, odd = folder_with(kind, tmp_path / "images")
    with pytest.raises(DataError, match="on_bad_image=skip") as raised:
        datamodule(root, 3, pipeline, on_bad_image="error").setup()
    assert str(odd) in str(raised.value) and "\n" not in str(raised.value)


def test_a_run_on_a_folder_of_odd_images_trains_and_lists_the_unreadable(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 3, "val": 2})
    written = {kind: write(root / "train" / ("cat" if i % 2 else "dog")) for i, (kind, (write, _)) in
               enumerate(IMAGE_KINDS.items())}  # fmt: skip
    unreadable = sorted(str(written[k]) for k, (_, readable) in IMAGE_KINDS.items() if not readable)
    overrides = [
        *small(root),
        "trainer=cpu",
        "logger=none",
        "trainer.max_epochs=1",
        "data.pipeline=streaming",
    ]
    with pytest.warns(UserWarning, match="skipping 4 unreadable"):
        results = train(compose_config(overrides), tmp_path / "run")
    assert results["status"] == "complete" and results["bad_images"] == unreadable
    assert results["split_sizes"]["train"] == 6 + len(IMAGE_KINDS) - len(unreadable)
