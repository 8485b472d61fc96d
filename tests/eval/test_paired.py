"""Paired differences against plain arithmetic on the units, and their intervals against the
intervals module's own (the one bootstrap)."""

import numpy as np
import pytest

from inplace_ttt.eval.intervals import difference_interval, ratio_interval
from inplace_ttt.eval.paired import paired_mean, paired_ratio


def test_paired_mean_is_the_mean_of_the_units_differences_where_both_have_one():
    a = [3.0, 2.5, None, 4.0, 1.0]
    b = [2.9, 2.7, 3.3, None, 0.5]
    got = paired_mean(a, b, seed=1)
    assert got["units"] == 3
    assert got["difference"] == pytest.approx(((3.0 - 2.9) + (2.5 - 2.7) + (1.0 - 0.5)) / 3)
    assert got["interval"] == difference_interval([3.0, 2.5, 1.0], [2.9, 2.7, 0.5], seed=1)
    scaled = paired_mean([1, 0, 1, 1], [0, 0, 1, 0], scale=100.0)  # samples' scores as percentage points
    assert scaled["difference"] == pytest.approx(50.0) and 0 <= scaled["interval"][0] <= 50 <= scaled["interval"][1] <= 100
    assert paired_mean([None], [1.0]) == {"difference": None, "interval": None, "units": 0}
    with pytest.raises(ValueError, match="differ in number: 2 against 1"):
        paired_mean([1.0, 2.0], [1.0])


def test_paired_ratio_is_the_difference_of_token_weighted_means():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 40, 20).astype(float)
    counts[3] = 0  # a document with no token in this bucket
    a, b = rng.normal(3, 0.5, 20) * counts, rng.normal(3, 0.5, 20) * counts
    got = paired_ratio(a.tolist(), b.tolist(), counts.tolist(), seed=2)
    assert got["difference"] == pytest.approx(a.sum() / counts.sum() - b.sum() / counts.sum())
    assert got["interval"] == ratio_interval((a - b).tolist(), counts.tolist(), seed=2)
    assert got["units"] == 19
    assert paired_ratio([0.0], [0.0], [0.0])["difference"] is None
