from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from tlbench.models.module import TransferModule
from tlbench.run.figures import (
    RunFigureRecorder,
    denormalize,
    most_confidently_wrong,
    write_run_figures,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = ["cat", "dog", "owl"]


def tensorboard_images(log_dir) -> dict[str, tuple[int, int]]:
    """{tag: (width, height)} of the images in the event files under `log_dir`."""
    events = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0})
    events.Reload()
    latest = {tag: events.Images(tag)[-1] for tag in events.Tags()[IMAGES]}
    return {tag: (image.width, image.height) for tag, image in latest.items()}


def test_run_figures_are_pngs_and_tensorboard_images(tmp_path):
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(30, 3, generator=generator).softmax(dim=1)
    labels = torch.randint(0, 3, (30,), generator=generator)
    images = torch.randn(30, 3, 24, 24, generator=generator)
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb", version="")

    paths = write_run_figures(
        tmp_path,
        logger,
        test_probs=probs,
        test_labels=labels,
        test_images=images,
        train_images=images[:6],
        train_labels=labels[:6],
        class_names=CLASSES,
        mean=MEAN,
        std=STD,
    )

    assert set(paths) == {"confusion_matrix", "confidently_wrong", "train_batch"}
    for path in paths.values():
        assert path.parent == tmp_path / "figures"
        with Image.open(path) as png:
            assert png.format == "PNG" and png.mode == "RGB" and min(png.size) > 100
    logged = tensorboard_images(tmp_path / "tb")
    assert set(logged) == {f"figures/{name}" for name in paths}
    for name, path in paths.items():
        with Image.open(path) as png:
            assert logged[f"figures/{name}"] == png.size


def test_without_images_only_the_confusion_matrix_is_drawn_and_no_logger_is_fine(tmp_path):
    probs = torch.eye(2)[[0, 1, 1]]
    paths = write_run_figures(
        tmp_path,
        None,
        test_probs=probs,
        test_labels=torch.tensor([0, 1, 0]),
        class_names=["ants", "bees"],
        mean=(0.5,),
        std=(0.5,),
    )
    assert list(paths) == ["confusion_matrix"]
    assert paths["confusion_matrix"].is_file()


def test_most_confidently_wrong_orders_by_confidence_and_skips_right_answers():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 1, 0])
    assert most_confidently_wrong(probs, labels, k=5).tolist() == [1, 3, 2]
    assert most_confidently_wrong(probs, labels, k=1).tolist() == [1]


def test_denormalize_inverts_the_preset_normalisation():
    pixels = torch.rand(2, 3, 5, 5)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(denormalize((pixels - mean) / std, MEAN, STD), pixels, atol=1e-6)


def test_recorder_collects_what_the_network_saw_during_fit_and_test(tmp_path):
    model = TransferModule(
        backbone={"name": "resnet18", "weights": None},
        num_classes=3,
        class_names=CLASSES,
        strategy={"name": "full"},
    )
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(20, 3, 32, 32, generator=generator), torch.arange(20) % 3)
    loader = DataLoader(data, batch_size=8)
    recorder = RunFigureRecorder(max_images=4)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[recorder],
    )
    trainer.fit(model, train_dataloaders=loader)
    trainer.test(model, dataloaders=loader, verbose=False)

    recorded = recorder.figure_inputs()
    assert recorded["test_probs"].shape == (20, 3)
    assert recorded["test_labels"].tolist() == (torch.arange(20) % 3).tolist()
    assert torch.equal(recorded["train_images"], data.tensors[0][:4])
    wrong = most_confidently_wrong(recorded["test_probs"], recorded["test_labels"], k=4)
    assert recorded["test_image_rows"].tolist() == wrong.tolist()
    assert torch.equal(recorded["test_images"], data.tensors[0][wrong])
    paths = write_run_figures(tmp_path, None, **recorded, class_names=CLASSES, mean=MEAN, std=STD)
    assert {"confusion_matrix", "train_batch"} <= set(paths)


def test_two_class_figures_decide_at_the_saved_threshold_and_say_so(tmp_path, monkeypatch):
    from tlbench.models.decision import BinaryDecision
    from tlbench.run import figures

    drawn = {}

    def keep(*args, **kwargs):
        drawn["confusion"] = original(*args, **kwargs)
        return drawn["confusion"]

    original = figures.confusion_matrix_figure
    monkeypatch.setattr(figures, "confusion_matrix_figure", keep)
    # P(bees) 0.4 for every image: the more probable class is ants, but the threshold 0.3 answers bees.
    probs = torch.tensor([[0.6, 0.4]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    decision = BinaryDecision(0.3, "bees", "ants", 1, "youden")
    write_run_figures(
        tmp_path, None, test_probs=probs, test_labels=labels, test_images=torch.zeros(4, 1, 8, 8),
        class_names=["ants", "bees"], mean=(0.5,), std=(0.5,), decision=decision,
    )  # fmt: skip
    (ax, *_) = drawn["confusion"].axes
    counts = [int(t.get_text()) for t in ax.texts]  # row by row: true ants → ants, bees; true bees → …
    assert counts == [0, 3, 0, 1]
    assert f"predicted: {decision.text}" in ax.get_title()
    # The most confidently wrong are the three ants answered bees at the threshold, not the right bee.
    assert sorted(most_confidently_wrong(probs, labels, 16, decision).tolist()) == [0, 1, 2]
