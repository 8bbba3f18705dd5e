"""trainer.budget_steps: runs on small and large training subsets take the same number of optimizer steps
(to within one epoch), and the LR schedule spans the steps the run takes."""

from __future__ import annotations

import pytest

from conftest import make_image_folder, small
from tlbench.config.schema import ConfigError
from tlbench.models import module as module_code
from tlbench.run.budget import apply_budget, budget_epochs
from tlbench.run.checks import check_config
from tlbench.run.train import compose_config, train


@pytest.mark.parametrize(
    ("budget", "per_epoch", "floor", "expected"),
    [
        (12, 2, 1, (6, 1)),  # 6 epochs of 2 steps
        (12, 5, 1, (3, 1)),  # 15 steps: the fewest whole epochs that reach 12
        (12, 40, 3, (3, 1)),  # one epoch would do; the floor says 3
        (300, 2, 3, (150, 15)),  # validated every 15th epoch, the last one included
        (50, 2, 1, (26, 2)),  # 25 epochs rounded up to a multiple of the interval: 1 epoch over
    ],
)
def test_a_budget_becomes_whole_epochs_that_reach_it(budget, per_epoch, floor, expected):
    epochs, every = budget_epochs(budget, per_epoch, floor)
    assert (epochs, every) == expected
    assert epochs % every == 0 and epochs * per_epoch >= budget


def test_the_budget_sets_the_epochs_of_this_split_and_leaves_the_callers_config_alone(tmp_path):
    images = make_image_folder(tmp_path / "images", per_split={"train": 2, "val": 1})
    cfg = compose_config([*small(images), "trainer.budget_steps=300", "trainer.budget_min_epochs=3"])
    run = check_config(cfg)
    budgeted = apply_budget(cfg, run.trainer, train_images=100, batch_size=64)  # 2 steps an epoch
    assert (budgeted.trainer.max_epochs, budgeted.trainer.check_val_every_n_epoch) == (150, 15)
    assert cfg.trainer.max_epochs == 10 and "check_val_every_n_epoch" not in cfg.trainer
    assert apply_budget(cfg, run.trainer, train_images=3000, batch_size=64).trainer.max_epochs == 7
    unbudgeted = compose_config(small(images))
    assert apply_budget(unbudgeted, check_config(unbudgeted).trainer, 100, 64) is unbudgeted


@pytest.mark.slow  # ten short epochs through tlbench.train (~30 s on a loaded 2-core machine)
def test_small_and_large_subsets_take_the_same_steps_and_the_schedule_follows(tmp_path, monkeypatch):
    images = make_image_folder(tmp_path / "images", per_split={"train": 16, "val": 2})
    scheduled = []

    def recording(optimizer, optim, total_steps, steps_per_epoch):
        scheduled.append(total_steps)
        return build_scheduler(optimizer, optim, total_steps, steps_per_epoch)

    build_scheduler = module_code.build_scheduler
    monkeypatch.setattr(module_code, "build_scheduler", recording)
    results = {}
    # batch 8, 2 classes: 4 per class is 1 step an epoch, 16 per class 4 steps; budget 8 steps.
    for per_class in (4, 16):
        overrides = [
            *small(images), "logger=none", "trainer.enable_progress_bar=false",
            "trainer.num_sanity_val_steps=0", f"data.per_class={per_class}", "trainer.budget_steps=8",
            "trainer.budget_min_epochs=1", "trainer.max_epochs=1",
        ]  # fmt: skip
        results[per_class] = train(compose_config(overrides), tmp_path / f"run{per_class}")
    assert results[4]["optimizer_steps"] == results[16]["optimizer_steps"] == 8
    assert (results[4]["params"]["epochs"], results[16]["params"]["epochs"]) == (8, 2)
    assert results[4]["epochs_trained"] == 8  # trainer.max_epochs=1 gave way to the budget
    assert scheduled == [8, 8]  # the cosine schedule ends where the budget does


def test_a_bad_budget_is_refused_naming_the_key(tmp_path):
    images = make_image_folder(tmp_path / "images", per_split={"train": 2, "val": 1})
    with pytest.raises(
        ConfigError, match=r"trainer.budget_steps must be null \(off: train trainer.max_epochs\)"
    ):
        check_config(compose_config([*small(images), "trainer.budget_steps=0"]))
