"""Bootstrap intervals against what they must equal: the normal approximation for many units,
exact values for data without spread, and nothing for a single unit."""

import numpy as np
import pytest

from inplace_ttt.eval.intervals import difference_interval, mean_interval, ratio_difference_interval, ratio_interval


def test_mean_interval_of_many_units_matches_the_normal_approximation():
    x = np.random.default_rng(0).normal(3.0, 0.5, 400)
    lo, hi = mean_interval(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo < x.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_ratio_interval_weights_units_by_their_counts():
    rng = np.random.default_rng(1)
    counts = rng.integers(50, 500, 300).astype(float)
    means = rng.normal(2.0, 0.3, 300)
    lo, hi = ratio_interval(means * counts, counts)
    pooled = (means * counts).sum() / counts.sum()
    assert lo < pooled < hi
    # the delta-method standard error of a ratio of sums, an independent formula
    se = np.sqrt(np.sum((counts * (means - pooled)) ** 2)) / counts.sum()
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.15)
    assert ratio_interval([1.0, 5.0, 3.0], [1.0, 0.0, 1.0]) is not None  # a unit with no tokens is left out
    assert ratio_interval([1.0, 5.0], [1.0, 0.0]) is None


def test_no_spread_and_too_few_units():
    assert mean_interval([0.0, 0.0, 0.0]) == [0.0, 0.0]
    assert ratio_interval([2.0, 4.0], [1.0, 2.0]) == [2.0, 2.0]
    assert mean_interval([1.5]) is None and mean_interval([]) is None


def test_paired_difference_cancels_what_the_units_share():
    base = np.random.default_rng(2).normal(3.0, 1.0, 50)  # documents of very different difficulty
    assert difference_interval(base - 0.1, base) == pytest.approx([-0.1, -0.1])
    noisy = base - 0.1 + np.random.default_rng(3).normal(0, 0.01, 50)
    lo, hi = difference_interval(noisy, base)
    assert hi < 0 and hi - lo < 0.02  # far tighter than either model's own interval
    a_lo, a_hi = mean_interval(noisy)
    assert a_hi - a_lo > 10 * (hi - lo)


def test_paired_ratio_difference_resamples_units_together():
    rng = np.random.default_rng(5)
    counts = rng.integers(20, 400, 40).astype(float)
    difficulty = rng.normal(3.0, 1.0, 40)  # conversations of very different difficulty, as loss per value
    base_sums = difficulty * counts
    sums = (difficulty - 0.05 + rng.normal(0, 0.005, 40)) * counts  # the model: 0.05 lower everywhere, a little noise
    lo, hi = ratio_difference_interval(sums, counts, base_sums, counts)
    point = sums.sum() / counts.sum() - base_sums.sum() / counts.sum()
    assert lo < point < hi and hi < 0 and hi - lo < 0.01
    # unpaired (each model's units resampled on their own), the units' spread would swamp the 0.05
    a_lo, a_hi = ratio_interval(sums, counts)
    b_lo, b_hi = ratio_interval(base_sums, counts)
    assert (a_hi - a_lo) + (b_hi - b_lo) > 20 * (hi - lo)
    # the same shift on every unit: every resample of pairs gives it exactly
    assert ratio_difference_interval((difficulty - 0.05) * counts, counts, base_sums, counts) == pytest.approx([-0.05, -0.05])
    # a unit without values for one model is left out; one unit left: no interval
    assert ratio_difference_interval([1.0, 2.0], [1.0, 1.0], [1.0, 2.0], [0.0, 1.0]) is None


def test_same_seed_same_interval():
    x = np.random.default_rng(4).normal(0, 1, 30)
    assert mean_interval(x, seed=5) == mean_interval(x, seed=5) != mean_interval(x, seed=6)
