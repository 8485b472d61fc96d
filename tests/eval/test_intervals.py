"""Bootstrap intervals against what they must equal: the normal approximation for many units,
exact values for data without spread, and nothing for a single unit."""

import numpy as np
import pytest

from inplace_ttt.eval.intervals import difference_interval, mean_interval, ratio_interval


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


def test_same_seed_same_interval():
    x = np.random.default_rng(4).normal(0, 1, 30)
    assert mean_interval(x, seed=5) == mean_interval(x, seed=5) != mean_interval(x, seed=6)
