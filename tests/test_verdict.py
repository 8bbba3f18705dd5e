"""The statistics of the verdict against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tlbench.analysis import verdict
from tlbench.analysis.crossings import crossing
from tlbench.analysis.verdict import Comparison, Sample, compare, holm, judge, seeds_needed
from tlbench.results.predictions import read_predictions, write_predictions

ITEMS = [f"img_{i:03d}.jpg" for i in range(100)]


def runs(scores_by_seed: dict[int, np.ndarray], items=ITEMS) -> dict[int, Sample]:
    return {
        seed: Sample(float(np.mean(s)), list(items), np.asarray(s, float))
        for seed, s in scores_by_seed.items()
    }


def right(k: int, n: int = 100) -> np.ndarray:
    """The first k of n images classified right."""
    return (np.arange(n) < k).astype(float)


def test_a_clear_winner_has_every_replicate_at_the_difference():
    # A is right on every image of every seed, B on none: every replicate is exactly +1.
    a, b = runs({0: right(100), 1: right(100), 2: right(100)}), runs({0: right(0), 1: right(0), 2: right(0)})
    c = compare("A", a, "B", b, np.random.default_rng(0))
    assert (c.diff, c.low, c.high) == (1.0, 1.0, 1.0)
    assert c.p == pytest.approx(2 / (verdict.N_BOOT + 1))  # no replicate at or below 0
    assert c.method == "bootstrap (crossed)" and c.n_images == 100 and c.seeds == [0, 1, 2]


def test_a_tie_has_p_one():
    same = runs({0: right(70), 1: right(80)})
    c = compare("A", same, "B", runs({0: right(70), 1: right(80)}), np.random.default_rng(0))
    assert (c.diff, c.low, c.high, c.p) == (0.0, 0.0, 0.0, 1.0)
    assert seeds_needed(c.diff, c.seed_sd) == "no difference to separate"


def test_image_resampling_matches_the_binomial():
    # One seed; A right and B wrong on 30 of 100 images, the same elsewhere: the resampled difference is
    # Binomial(100, 0.3) / 100, whose 2.5% and 97.5% quantiles are 0.21 and 0.39.
    c = compare("A", runs({0: right(30)}), "B", runs({0: right(0)}), np.random.default_rng(0))
    assert c.diff == pytest.approx(0.3)
    expected = stats.binom.ppf([0.025, 0.975], 100, 0.3) / 100
    assert [c.low, c.high] == pytest.approx(expected, abs=0.011)
    assert c.seed_sd is None


def test_seeds_are_resampled_and_images_nested_when_splits_differ():
    # Two seeds on different images, each difference constant within its seed (0 and 0.2): image draws
    # change nothing, and the two seeds drawn with replacement give 0, 0.1 or 0.2 with chances 1/4, 1/2, 1/4.
    a = {0: Sample(0.5, ["x", "y"], np.zeros(2)), 1: Sample(0.7, ["z", "w"], np.full(2, 0.2))}
    b = {0: Sample(0.5, ["x", "y"], np.zeros(2)), 1: Sample(0.5, ["z", "w"], np.zeros(2))}
    c = compare("A", a, "B", b, np.random.default_rng(0))
    assert c.method == "bootstrap (nested)" and c.image_var == 0
    assert c.diff == pytest.approx(0.1)
    assert (c.low, c.high) == pytest.approx((0.0, 0.2))
    assert np.mean(c.replicates <= 0) == pytest.approx(0.25, abs=0.02)
    assert c.p == pytest.approx(0.5, abs=0.04)
    assert c.seed_sd == pytest.approx(0.2 / math.sqrt(2))


def test_predictions_pair_by_item_not_by_row(tmp_path):
    order = np.random.default_rng(1).permutation(100)
    targets = np.zeros(100, dtype=int)
    probs_a = np.tile([0.9, 0.1], (100, 1))  # right on every image
    probs_b = np.where(np.arange(100)[:, None] < 40, [0.2, 0.8], [0.7, 0.3])  # wrong on the first 40
    write_predictions(tmp_path / "a", ITEMS, probs_a, targets, ["ants", "bees"])
    write_predictions(tmp_path / "b", [ITEMS[i] for i in order], probs_b[order], targets, ["ants", "bees"])
    a, b = read_predictions(tmp_path / "a"), read_predictions(tmp_path / "b")
    assert b.classes == ["ants", "bees"] and b.probs[0] == pytest.approx(probs_b[order[0]])
    c = compare(
        "A",
        {0: Sample(1.0, a.items, a.correct)},
        "B",
        {0: Sample(0.6, b.items, b.correct)},
        np.random.default_rng(0),
    )
    assert c.diff == pytest.approx(0.4) and c.method == "bootstrap (crossed)"


def test_without_predictions_a_paired_t_test_over_seeds():
    a = {s: Sample(v) for s, v in enumerate([0.80, 0.82, 0.84])}
    b = {s: Sample(v) for s, v in enumerate([0.70, 0.75, 0.71])}
    c = compare("A", a, "B", b, np.random.default_rng(0))
    # Differences 0.10, 0.07, 0.13: mean 0.1, SD 0.03, t = 0.1 / (0.03 / √3) = 5.77 on 2 degrees of freedom.
    assert c.method == "paired t-test" and c.note == "no predictions files"
    assert c.diff == pytest.approx(0.1)
    assert c.p == pytest.approx(2 * stats.t.sf(0.1 / (0.03 / math.sqrt(3)), 2))
    half = stats.t.ppf(0.975, 2) * 0.03 / math.sqrt(3)
    assert (c.low, c.high) == pytest.approx((0.1 - half, 0.1 + half))


def test_holm_step_down_by_hand():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 → made monotone: 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([0.01, None, 0.2]) == [pytest.approx(0.02), None, pytest.approx(0.2)]


def test_seeds_needed_by_hand():
    # t(0.975, 10)·0.03/√11 = 0.0202 ≥ 0.02, t(0.975, 11)·0.03/√12 = 0.0191 < 0.02: 12 seeds.
    assert seeds_needed(0.02, 0.03) == 12
    assert seeds_needed(-0.02, 0.03) == 12
    assert seeds_needed(0.02, None) is None
    assert seeds_needed(0.02, 0.03, image_var=0.02**2).startswith("no number of seeds")


def test_three_strategies_a_winner():
    arms = {
        "freeze": runs({s: right(60) for s in range(3)}),
        "partial": runs({s: right(70) for s in range(3)}),
        "full": runs({s: right(95) for s in range(3)}),
    }
    v = judge(("d", "b", "all"), arms)
    assert [s for s, _ in v.ranking] == ["full", "partial", "freeze"]
    assert v.winner == "full" and v.tied == ["full"]
    assert [(c.a, c.b) for c in v.comparisons] == [
        ("full", "partial"),
        ("full", "freeze"),
        ("partial", "freeze"),
    ]
    assert all(c.p_holm >= c.p for c in v.comparisons)
    assert v.text.startswith("**full** wins: ahead of partial by +0.250")


def test_three_strategies_two_cannot_be_told_apart():
    # full and partial differ on 1 image in 100 per seed; both far ahead of freeze.
    arms = {
        "freeze": runs({s: right(50) for s in range(3)}),
        "partial": runs({0: right(90), 1: right(91), 2: right(89)}),
        "full": runs({0: right(91), 1: right(91), 2: right(91)}),
    }
    v = judge(("d", "b", "all"), arms)
    assert v.winner is None and v.tied == ["full", "partial"]
    top = v.comparisons[0]
    assert (top.a, top.b) == ("full", "partial") and not top.separated
    assert all(c.separated for c in v.comparisons[1:])
    assert "**full**, **partial** cannot be told apart" in v.text and "behind: freeze" in v.text


def test_ranking_is_by_mean_and_holm_counts_every_pair():
    arms = {
        name: {0: Sample(acc), 1: Sample(acc + 0.01)} for name, acc in [("a", 0.8), ("b", 0.6), ("c", 0.7)]
    }
    v = judge(("d", "b", "all"), arms)
    assert [s for s, _ in v.ranking] == ["a", "c", "b"]
    assert "paired t-test: no predictions files" in v.text
    raw = [c.p for c in v.comparisons]
    assert [c.p_holm for c in v.comparisons] == pytest.approx(holm(raw))


def comparison(diff: float, replicates=None) -> Comparison:
    return Comparison("full", "freeze", diff, None, None, None, "test", [0], replicates=replicates)


def test_crossing_interpolates_in_log_size():
    # freeze ahead by 0.1 at 10 images/class, full ahead by 0.1 at 1000: they cross at √(10·1000) = 100.
    c = crossing([10, 1000], [comparison(-0.1), comparison(0.1)])
    assert (c.a, c.b, c.between) == ("full", "freeze", (10, 1000))
    assert c.at == pytest.approx(100.0)
    assert "full overtakes freeze from about 100 images/class" in c.text


def test_crossing_uses_the_last_change_of_lead_and_bootstrap_interval():
    rng = np.random.default_rng(0)
    noisy = [comparison(d, d + rng.normal(0, 0.01, 2000)) for d in (0.05, -0.1, 0.1, 0.2)]
    c = crossing([10, 30, 100, 300], noisy)
    assert c.between == (30, 100)
    assert c.at == pytest.approx(math.exp((math.log(30) + math.log(100)) / 2))
    assert c.low < c.at < c.high and 30 <= c.low and c.high <= 100
    assert c.share > 0.99


def test_no_crossing_says_who_leads():
    c = crossing([10, 100], [comparison(-0.2), comparison(-0.1)])
    assert (c.a, c.at) == ("freeze", None)
    assert c.text.startswith("freeze is ahead of full at every size")


def with_interval(diff: float, half_width: float) -> Comparison:
    return Comparison("full", "freeze", diff, diff - half_width, diff + half_width, None, "test", [0, 1])


def test_a_crossing_is_claimed_only_where_the_intervals_show_both_leads():
    shown = crossing([10, 1000], [with_interval(-0.1, 0.05), with_interval(0.1, 0.05)])
    assert "full overtakes freeze from about 100 images/class" in shown.text
    # The means cross, but at 1000 images/class the interval includes 0: no overtaking is claimed.
    unclear = crossing([10, 1000], [with_interval(-0.1, 0.05), with_interval(0.01, 0.03)])
    assert unclear.at is not None and "overtakes" not in unclear.text
    assert (
        "cross at about" in unclear.text and "at 1000 images/class their interval includes 0" in unclear.text
    )
    before = crossing([10, 1000], [with_interval(-0.01, 0.05), with_interval(0.1, 0.05)])
    assert "overtakes" not in before.text and "at 10 images/class their interval includes 0" in before.text


def test_a_higher_mean_at_every_size_is_a_lead_only_where_its_interval_excludes_zero():
    everywhere = crossing([50, 300], [with_interval(0.1, 0.05), with_interval(0.2, 0.05)])
    assert everywhere.text.startswith("full is ahead of freeze at every size")
    nowhere = crossing([50, 300], [with_interval(0.003, 0.02), with_interval(0.001, 0.02)])
    assert (
        nowhere.text.startswith("full and freeze are told apart at no size") and "ahead" not in nowhere.text
    )
    some = crossing([50, 300], [with_interval(0.003, 0.02), with_interval(0.05, 0.02)])
    assert some.text.startswith(
        "full's mean is the higher at every size, told apart at 300 images/class only"
    )
