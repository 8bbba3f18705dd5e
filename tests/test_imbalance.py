"""Imbalanced classes (data.balance), balanced accuracy, the binary decision threshold and honest test
splits (data.test_fraction), used the way a user would: generated folders, 32 px, CPU, one tiny epoch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import (
    CLASS_COLOURS,
    data_config,
    make_image_folder,
    save_untrained_checkpoint,
    small,
    write_images,
)
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.sources import TEST_CARVED, TEST_IS_VAL
from tlbench.models.backbones import Preset
from tlbench.models.decision import decide, youden_threshold
from tlbench.models.module import TransferModule
from tlbench.run.train import compose_config, train
from tlbench.serve.export import load_checkpoint, serving_metadata
from tlbench.serve.predict import load_model, predict
from tlbench.serve.predict import main as main_predict

RGB = Preset(
    mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize_size=36, crop_size=32, interpolation="bilinear"
)


def imbalanced_folder(root: Path, majority: int = 18, minority: int = 2, val: int = 4) -> Path:
    """<root>/{train,val}/{cat,dog}: cats outnumber dogs majority:minority in train; val is balanced."""
    for c, (name, count) in enumerate((("cat", majority), ("dog", minority))):
        write_images(root / "train" / name, CLASS_COLOURS[c], count, seed=c)
        write_images(root / "val" / name, CLASS_COLOURS[c], val, seed=10 + c)
    return root


def datamodule(root: Path, **kwargs) -> ImageDataModule:
    kwargs.setdefault("num_workers", 0)
    seed, run_dir = kwargs.pop("seed", 0), kwargs.pop("run_dir", None)
    return ImageDataModule(data_config(root, **kwargs), RGB, seed, run_dir)


def on_cpu(root: Path) -> list[str]:
    return [*small(root), "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"]


# -------------------------------------------------------------------------------------- data.balance=loss
def test_loss_weights_are_inverse_class_frequency_with_mean_one(tmp_path):
    dm = datamodule(imbalanced_folder(tmp_path / "images"), balance="loss")
    # 18 cats, 2 dogs: inverse frequencies 1/18 and 1/2, whose mean is 5/18.
    assert dm.class_weights() == pytest.approx([0.2, 1.8])
    assert datamodule(tmp_path / "images", balance="none").class_weights() is None
    balanced = make_image_folder(tmp_path / "balanced", per_split={"train": 6, "val": 2})
    assert datamodule(balanced, balance="loss").class_weights() is None  # nothing to weight: the plain loss


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # no trainer: nothing to log to
def test_the_training_loss_is_the_class_weighted_cross_entropy():
    model = TransferModule({"name": "resnet18", "weights": None}, num_classes=2, class_weights=[0.2, 1.8])
    model.eval()  # the same logits twice
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 0, 1])
    with torch.no_grad():
        loss = model.training_step((images, targets), 0)
        logits = model(images)
    assert loss == pytest.approx(F.cross_entropy(logits, targets, weight=torch.tensor([0.2, 1.8])).item())
    assert loss != pytest.approx(F.cross_entropy(logits, targets).item())


# ----------------------------------------------------------------------------------- data.balance=sampler
def epoch_label_counts(dm: ImageDataModule, epoch: int = 0) -> Counter:
    dm.setup()
    dm.current_epoch = lambda: epoch  # the epoch Lightning would be starting
    return Counter(int(y) for _, labels in dm.train_dataloader() for y in labels)


@pytest.mark.parametrize("pipeline", ["memory", "streaming"])
def test_the_balanced_sampler_draws_each_class_about_equally_often(tmp_path, pipeline):
    root = imbalanced_folder(tmp_path / "images", majority=90, minority=10)
    plain = epoch_label_counts(datamodule(root, pipeline=pipeline, balance="none"))
    assert plain == {0: 90, 1: 10}  # each image once: 9:1

    balanced = datamodule(root, pipeline=pipeline, balance="sampler")
    counts = epoch_label_counts(balanced)
    assert sum(counts.values()) == 100  # an epoch is as long as before
    assert 35 <= counts[1] <= 65  # binomial(100, 0.5): ±3 standard deviations
    # Seeded by (seed, epoch): a resumed run draws the epoch it would have drawn.
    assert counts == epoch_label_counts(datamodule(root, pipeline=pipeline, balance="sampler"))
    assert epoch_label_counts(balanced, epoch=1) != counts


def test_the_balanced_sampler_leaves_a_balanced_split_as_it_was(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 6, "val": 2})
    plain, balanced = (
        torch.cat([x for x, _ in datamodule(root, balance=balance).train_dataloader()])
        for balance in ("none", "sampler")
    )
    assert torch.equal(plain, balanced)  # the same images, in the same order, with the same crops


def test_the_balanced_sampler_keeps_every_image_of_a_nearly_balanced_split():
    from tlbench.data.loaders import IMBALANCED_RATIO, epoch_order

    def order(majority: int, minority: int) -> torch.Tensor:
        labels = torch.tensor([0] * majority + [1] * minority)
        return epoch_order(labels, torch.Generator().manual_seed(0), balanced=True)

    # hymenoptera's 124:121 is a plain shuffle: each image once per epoch, none left out by the draw.
    assert sorted(order(124, 121).tolist()) == list(range(245))
    # From IMBALANCED_RATIO on, the draw is class-balanced (with replacement: repeats appear).
    minority = 20
    drawn = order(int(IMBALANCED_RATIO * minority), minority)
    assert len(set(drawn.tolist())) < len(drawn)


# -------------------------------------------------------------------------- the binary decision threshold
def test_youden_threshold_separates_a_constructed_validation_set():
    from torchmetrics.classification import BinaryROC

    roc = BinaryROC()
    roc.update(torch.tensor([0.1, 0.2, 0.25, 0.3, 0.35, 0.4]), torch.tensor([0, 0, 0, 1, 1, 1]))
    threshold = youden_threshold(roc)
    assert threshold == pytest.approx(0.3)  # every positive at or above, every negative below
    probs = torch.tensor([[0.71, 0.29], [0.7, 0.3]])
    assert decide(probs, threshold).tolist() == [0, 1]
    assert decide(probs, None).tolist() == [0, 0]  # no threshold: the more probable class


def test_a_run_saves_the_threshold_weights_and_balanced_accuracy_and_reloads_them(tmp_path):
    root = imbalanced_folder(tmp_path / "images")
    overrides = [*on_cpu(root), "trainer.max_epochs=1", "data.balance=loss"]
    results = train(compose_config(overrides), tmp_path / "run")

    metrics = results["metrics"]
    for key in ("val/balanced_acc", "test/balanced_acc", "test/acc@thr", "test/balanced_acc@thr"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert {"test/sensitivity@thr", "test/specificity@thr", "test/acc", "test/sensitivity"} <= set(metrics)
    # One threshold per run (the best checkpoint's), and a sentence: what it decides, where it was chosen.
    assert 0.0 <= results["threshold"] <= 1.0
    assert not [key for key in metrics if "threshold" in key]
    assert results["decision"] == (
        f"dog when P(dog) ≥ {results['threshold']:.3f}, else cat "
        "(threshold chosen on the validation split by Youden's J at this checkpoint's epoch)"
    )
    assert results["test_split"] == TEST_IS_VAL  # no test folder and no data.test_fraction: today's behaviour

    reloaded = TransferModule.load_from_checkpoint(
        tmp_path / "run" / results["best_checkpoint"], map_location="cpu", weights_only=True
    )
    assert reloaded.threshold == pytest.approx(results["threshold"])
    assert reloaded.hparams.class_weights == pytest.approx([0.2, 1.8])
    assert reloaded.class_weights.tolist() == pytest.approx([0.2, 1.8])


def with_threshold(checkpoint: Path, threshold: float, out: Path) -> Path:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["hyper_parameters"]["threshold"] = threshold
    torch.save(saved, out)
    return out


def test_predict_and_export_decide_at_the_saved_threshold(tmp_path):
    checkpoint = save_untrained_checkpoint(tmp_path / "best.ckpt", ["normal", "pneumonia"])
    image = tmp_path / "xray.png"
    Image.new("L", (40, 32), 128).save(image)
    (first, p_first), (second, _) = predict(load_model(checkpoint), [image], top_k=2)[0]
    p_pneumonia = p_first if first == "pneumonia" else 1 - p_first

    below = with_threshold(checkpoint, p_pneumonia - 1e-3, tmp_path / "below.ckpt")
    above = with_threshold(checkpoint, p_pneumonia + 1e-3, tmp_path / "above.ckpt")
    assert predict(load_model(below), [image], top_k=2)[0][0][0] == "pneumonia"
    assert predict(load_model(above), [image], top_k=1)[0][0][0] == "normal"
    assert predict(load_model(above), [image], top_k=2)[0][1] == pytest.approx(("pneumonia", p_pneumonia))
    metadata = serving_metadata(load_checkpoint(below), "onnx", "m.onnx")
    assert metadata["threshold"] == pytest.approx(p_pneumonia - 1e-3)
    assert metadata["decision"].startswith(
        f"pneumonia when P(pneumonia) ≥ {p_pneumonia - 1e-3:.3f}, else normal"
    )


def test_predict_prints_why_a_binary_answer_is_not_the_more_probable_class(tmp_path, capsys):
    checkpoint = save_untrained_checkpoint(tmp_path / "best.ckpt", ["normal", "pneumonia"])
    image = tmp_path / "xray.png"
    Image.new("L", (40, 32), 128).save(image)
    ((name, p), _) = predict(load_model(checkpoint), [image], top_k=2)[0]
    p_pneumonia = p if name == "pneumonia" else 1 - p
    # A threshold above P(pneumonia) but below 0.5 picks normal for an image whose pneumonia share is 45%:
    # the answer is the less probable class, and the line has to say why.
    threshold = p_pneumonia + 0.05
    assert main_predict([str(with_threshold(checkpoint, threshold, tmp_path / "t.ckpt")), str(image)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(
        f"{image}: normal (P(pneumonia) {p_pneumonia:.1%} < threshold {threshold:.1%}, "
        "chosen on the validation split by Youden's J at this checkpoint's epoch): normal"
    )


def test_a_threshold_that_is_not_a_probability_names_the_key():
    with pytest.raises(ValueError, match="data.threshold"):
        TransferModule({"name": "resnet18", "weights": None}, num_classes=2, threshold_rule=1.5)


# ------------------------------------------------------------------------------------ data.test_fraction
def items(dm: ImageDataModule, split: str) -> set[str]:
    return set(dm.data.splits[split].items)


def test_a_carved_test_split_never_overlaps_train_or_val_and_is_seeded(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 20, "val": 4})
    dm = datamodule(root, test_fraction=0.25, run_dir=str(tmp_path / "run"))
    dm.setup()
    assert dm.data.test_split == TEST_CARVED
    test = items(dm, "test")
    assert not test & items(dm, "train") and not test & items(dm, "val")
    assert len(test) == 10 and Counter(dm.data.splits["test"].targets) == {0: 5, 1: 5}  # stratified
    assert len(items(dm, "train")) == 30 and len(items(dm, "val")) == 8
    assert set(json.loads((tmp_path / "run" / "test_split.json").read_text())["items"]) == test

    again = datamodule(root, test_fraction=0.25)
    again.setup()
    assert items(again, "test") == test
    other_seed = datamodule(root, test_fraction=0.25, seed=1)
    other_seed.setup()
    assert items(other_seed, "test") != test


def test_a_carved_test_split_stays_out_of_every_k_fold(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 20, "val": 4})
    dm = datamodule(root, test_fraction=0.25, folds=3, fold=1)
    dm.setup()
    assert not items(dm, "test") & (items(dm, "train") | items(dm, "val"))


def test_without_test_fraction_the_validation_split_is_tested_and_labelled_so(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4})
    dm = datamodule(root)
    dm.setup()
    assert dm.data.test_split == TEST_IS_VAL and items(dm, "test") == items(dm, "val")


def test_a_source_with_its_own_test_split_keeps_it(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4, "test": 4})
    dm = datamodule(root, test_fraction=0.25)
    dm.setup()
    assert dm.data.test_split == "test" and len(dm.data.splits["train"]) == 16
