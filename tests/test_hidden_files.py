"""Hidden files and folders at any depth are not data: what Jupyter (.ipynb_checkpoints/), macOS zips
(__MACOSX/, ._x.jpg), Synology NASes (@eaDir/) and dot-files leave among the images is never trained on,
validated on, counted, cross-validated or predicted — in every layout and in `predict` on a folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import data_config, make_image_folder, save_untrained_checkpoint, write_images
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.preset import Preset
from tlbench.serve.predict import expand_folders
from tlbench.serve.predict import main as predict_main

PRESET = Preset((0.5,) * 3, (0.25,) * 3, resize_size=40, crop_size=32, interpolation="bilinear")


def litter(class_dir: Path) -> list[Path]:
    """Valid JPEGs where tools leave copies, at every depth of a class folder; returns what was written."""
    source = sorted(class_dir.glob("*.jpg"))[0]
    places = [
        ".ipynb_checkpoints/img_000-checkpoint.jpg",  # Jupyter, the case the issue names
        "._img_000.jpg",  # AppleDouble beside the image
        ".img_000.jpg",  # any dot-file
        "__MACOSX/._img_000.jpg",
        "__MACOSX/img_000.jpg",
        "@eaDir/img_000.jpg/SYNOPHOTO_THUMB_M.jpg",  # Synology thumbnails
        "more/.ipynb_checkpoints/deep-checkpoint.jpg",  # deep inside a visible sub-folder
        "more/._deep.jpg",
        "more/.hidden/deeper/x.jpg",
    ]
    written = []
    for place in places:
        target = class_dir / place
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        written.append(target)
    return written


def littered_folder(root: Path, splits: bool = True) -> tuple[Path, int]:
    """Two classes (train/val, or one folder), litter in every class; returns (root, real train count)."""
    if splits:
        make_image_folder(root, per_split={"train": 6, "val": 2})
        class_dirs = [root / s / c for s in ("train", "val") for c in ("cat", "dog")]
    else:
        make_image_folder(root)  # 10 per class, no splits
        class_dirs = [root / c for c in ("cat", "dog")]
    # A visible sub-folder of a class is still that class (people sort images into batches).
    write_images(class_dirs[0] / "more", (220, 40, 40), 2, seed=7)
    for class_dir in class_dirs:
        litter(class_dir)
    # Split- and root-level junk folders that look like classes.
    for junk in ("__MACOSX/cat", ".ipynb_checkpoints/cat", "@eaDir/cat"):
        write_images((root / "train" if splits else root) / junk, (0, 0, 0), 2)
    return root, 6 + 6 + 2 if splits else 20 + 2


def datamodule(root: Path, **values) -> ImageDataModule:
    config = data_config(root, num_workers=0, batch_size=8, cache_dir=None, pipeline="streaming", **values)
    module = ImageDataModule(config, PRESET, seed=0)
    module.setup()
    return module


def assert_no_hidden(items: list) -> None:
    junk = [i for i in items if any(p.startswith(".") or p in ("__MACOSX", "@eaDir") for p in Path(i).parts)]
    assert junk == []


def test_hidden_files_are_not_images_of_a_class(tmp_path):
    root, real = littered_folder(tmp_path / "images")
    module = datamodule(root)
    assert module.classes == ["cat", "dog"]
    assert module.split_sizes() == {"train": real, "val": 4, "test": 4}
    for split in module.data.splits.values():
        assert_no_hidden(split.items)


def test_a_single_folder_with_a_macos_zip_folder_has_only_the_real_classes(tmp_path):
    root, real = littered_folder(tmp_path / "images", splits=False)
    module = datamodule(root)
    assert module.classes == ["cat", "dog"]
    assert sum(module.split_sizes()[s] for s in ("train", "val")) == real
    assert_no_hidden(module.data.splits["train"].items + module.data.splits["val"].items)


def test_k_fold_and_per_class_see_no_hidden_files(tmp_path):
    root, real = littered_folder(tmp_path / "images")
    folded = datamodule(root, folds=2, fold=1)
    assert sum(len(folded.data.splits[s]) for s in ("train", "val")) == real + 4  # the pool: train + val
    assert_no_hidden(folded.data.splits["train"].items + folded.data.splits["val"].items)
    subset = datamodule(root, per_class=100)  # more than any class: every visible image, no hidden one
    assert len(subset.data.splits["train"]) == real
    assert_no_hidden(subset.data.splits["train"].items)


def test_predict_on_a_folder_skips_hidden_files_at_every_depth(tmp_path, capsys):
    from tlbench.data.sources import image_files

    root, _ = littered_folder(tmp_path / "images")
    class_dir = root / "train" / "cat"
    listed = expand_folders([str(class_dir)])
    assert listed == [str(p) for p in image_files(class_dir)]
    assert len(listed) == 8 and all(".ipynb" not in p and "__MACOSX" not in p for p in listed)
    assert len(expand_folders([str(root)])) == 8 + 6 + 2 + 2  # nested: every split and class

    checkpoint = save_untrained_checkpoint(tmp_path / "model.ckpt", ["cat", "dog"])
    assert predict_main([str(checkpoint), str(class_dir), "--workers", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8
    assert_no_hidden([line.split(": ")[0] for line in lines])


def test_an_image_given_by_name_is_predicted_even_if_hidden(tmp_path):
    """Naming a file is a choice: only folder expansion leaves hidden files out."""
    [image] = write_images(tmp_path / ".ipynb_checkpoints", (10, 20, 30), 1)
    assert expand_folders([str(image)]) == [str(image)]


@pytest.mark.parametrize("junk", [".ipynb_checkpoints", "__MACOSX", "@eaDir"])
def test_a_folder_holding_only_hidden_images_is_named_as_empty(junk, tmp_path):
    write_images(tmp_path / "photos" / junk, (10, 20, 30), 2)
    with pytest.raises(FileNotFoundError, match="no image files under"):
        expand_folders([str(tmp_path / "photos")])
