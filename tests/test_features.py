"""strategy=freeze on cached features: a mode of the data side inside `trainer.fit`, so it must train the same
head as running the frozen network every step, and resume, optimise and report like every other run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_image_folder, small, train_until_killed
from tlbench.data.features import FeatureLoader
from tlbench.models.module import TransferModule
from tlbench.models.strategies import StrategyError
from tlbench.run.train import compose_config, train


@pytest.fixture
def generated(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 4, "test": 4})


def on_cpu(root: Path, *extra: str) -> list[str]:
    # fp32 on the CPU: the equivalences below are exact there (a GPU would embed in bf16).
    return [*small(root), "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false", *extra]


def head_of(checkpoint: Path) -> torch.Tensor:
    module = TransferModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    return torch.cat([module.net.head.weight.detach().flatten(), module.net.head.bias.detach()])


def test_cached_features_train_the_head_that_end_to_end_freeze_trains(generated, tmp_path):
    """Augmentation off: the same optimizer, cosine schedule, weight decay and batch order, so the cached run
    and the run with the frozen network in the loop end with the same head, weight for weight."""
    overrides = on_cpu(
        generated,
        "strategy=freeze",
        "strategy.head_lr=0.01",
        "data.pipeline=memory",
        "data.train_crop_scale=[1.0,1.0]",
        "data.hflip=false",
        "trainer.max_epochs=2",
    )
    cached = train(compose_config(overrides), tmp_path / "cached")
    end_to_end = train(compose_config([*overrides, "strategy.cache_features=false"]), tmp_path / "e2e")

    assert cached["feature_cache"] is True and end_to_end["feature_cache"] is False
    assert "trunk features" in cached["pipeline"]
    last = [tmp_path / run / "checkpoints" / "last.ckpt" for run in ("cached", "e2e")]
    start = head_of(last[0]) * 0  # a trained head is far from zero
    assert not torch.allclose(head_of(last[1]), start, atol=1e-3)
    assert torch.allclose(head_of(last[0]), head_of(last[1]), atol=1e-5)
    assert cached["metrics"]["test/acc"] == pytest.approx(end_to_end["metrics"]["test/acc"])


def test_a_cached_feature_run_resumes_from_last_ckpt_as_if_never_stopped(generated, tmp_path, monkeypatch):
    """With augmentation on, so each epoch embeds its own view: a run stopped after epoch 1 and run again
    continues from last.ckpt and ends with the uninterrupted run's head. SGD with the step schedule shows the
    configured optimizer and scheduler are the ones used."""
    overrides = on_cpu(
        generated,
        "strategy=freeze",
        "optim=sgd",
        "optim.step_epochs=1",
        "optim.gamma=0.5",
        "strategy.head_lr=0.05",
        "data.pipeline=memory",
        "trainer.max_epochs=3",
    )
    whole = train(compose_config(overrides), tmp_path / "whole")

    train_until_killed(overrides, tmp_path / "resumed", epoch=2, monkeypatch=monkeypatch)
    stopped = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert stopped["epoch"] == 1
    resumed = train(compose_config(overrides), tmp_path / "resumed")

    last = [tmp_path / run / "checkpoints" / "last.ckpt" for run in ("resumed", "whole")]
    assert torch.allclose(head_of(last[0]), head_of(last[1]), atol=1e-6)
    assert resumed["metrics"]["test/acc"] == pytest.approx(whole["metrics"]["test/acc"])
    final = torch.load(tmp_path / "whole/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    optimizer = final["optimizer_states"][0]
    assert all("momentum_buffer" in state for state in optimizer["state"].values()), "SGD, as configured"
    # stepped after every batch: after 3 epochs the rate stands at head_lr × gamma³
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5**3), "step schedule applied"


def test_a_cached_feature_run_reports_what_every_run_reports(generated, tmp_path):
    cached = train(
        compose_config(on_cpu(generated, "strategy=freeze", "trainer.max_epochs=1")), tmp_path / "a"
    )
    partial = train(
        compose_config(on_cpu(generated, "strategy=partial", "trainer.max_epochs=1")), tmp_path / "b"
    )
    assert cached["feature_cache"] is True and partial["feature_cache"] is False
    assert set(cached) == set(partial) and set(cached["metrics"]) == set(partial["metrics"])
    assert cached["train_images_per_s"] > 0 and cached["best_checkpoint"] == "checkpoints/best.ckpt"
    figures = {p.name for p in (tmp_path / "a" / "figures").iterdir()}
    assert figures == {p.name for p in (tmp_path / "b" / "figures").iterdir()}
    assert "train_batch.png" in figures, "the augmented images, though the head trained on features"


def test_features_are_embedded_once_per_epoch_with_augmentation_and_once_without():
    calls = {"n": 0}

    def embed(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return x.flatten(1)

    images = [(torch.randn(4, 2, 1, 1), None), (torch.randn(2, 2, 1, 1), None)]
    epoch = {"now": 0}
    for augmented, expected in ((True, 3), (False, 1)):
        calls["n"] = 0
        loader = FeatureLoader(
            lambda: images, torch.arange(6), embed, 4, True, 0, lambda: epoch["now"], augmented
        )
        for epoch["now"] in range(3):
            batches = list(loader)
            assert [len(y) for _, y in batches] == [4, 2] and batches[0][0].shape[1] == 2
        assert calls["n"] == expected * len(images), "one embedding pass per view"


@pytest.mark.parametrize("strategy", [["strategy=partial"], ["strategy=freeze", "strategy.bn=train"]])
def test_cache_features_true_needs_a_fixed_trunk(generated, tmp_path, strategy):
    cfg = compose_config([*on_cpu(generated), *strategy, "strategy.cache_features=true"])
    with pytest.raises(StrategyError, match="needs strategy=freeze with strategy.bn=eval"):
        train(cfg, tmp_path / "run")


def test_freeze_with_trainable_batchnorm_runs_end_to_end_by_default(generated, tmp_path):
    cfg = compose_config(
        [*on_cpu(generated), "strategy=freeze", "strategy.bn=train", "trainer.fast_dev_run=true"]
    )
    assert train(cfg, tmp_path / "run")["feature_cache"] is False
