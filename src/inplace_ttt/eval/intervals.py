"""95% bootstrap intervals for the numbers `ittt eval` compares models by.

The unit that is resampled is the one that varies independently: a document for losses (its
tokens are not independent of each other), a sample for task accuracies. Percentile intervals
from `scipy.stats.bootstrap`, with a fixed seed so that a report is reproducible. Fewer than two
units give no interval (None).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


def _bootstrap(data: tuple[np.ndarray, ...], statistic, seed: int) -> list[float] | None:
    from scipy.stats import bootstrap

    if len(data[0]) < 2:
        return None
    if all(np.all(d == d[0]) for d in data):  # every unit the same: no spread to resample
        value = float(statistic(*data, axis=-1))
        return [value, value]
    result = bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=RESAMPLES,
        confidence_level=LEVEL,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def mean_interval(values: Sequence[float], seed: int = 0) -> list[float] | None:
    """Interval of the mean of independent units (samples' scores, documents' losses)."""
    return _bootstrap((np.asarray(values, dtype=np.float64),), lambda x, axis: x.mean(axis=axis), seed)


def ratio_interval(sums: Sequence[float], counts: Sequence[float], seed: int = 0) -> list[float] | None:
    """Interval of ``sum(sums) / sum(counts)``, the token-weighted mean loss, resampling the units
    (documents) that each contribute a sum of token losses and a token count."""
    s, c = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    keep = c > 0
    return _bootstrap((s[keep], c[keep]), lambda s, c, axis: s.sum(axis=axis) / c.sum(axis=axis), seed)


def ratio_difference_interval(
    sums: Sequence[float], counts: Sequence[float], base_sums: Sequence[float], base_counts: Sequence[float], seed: int = 0
) -> list[float] | None:
    """Interval of ``sum(sums) / sum(counts) - sum(base_sums) / sum(base_counts)``: two models'
    token-weighted mean losses on the same units (conversations), the units resampled as pairs, so
    that what a unit does to both models (its difficulty) cancels. Units with no values for either
    model are left out."""
    arrays = [np.asarray(x, dtype=np.float64) for x in (sums, counts, base_sums, base_counts)]
    keep = (arrays[1] > 0) & (arrays[3] > 0)
    return _bootstrap(
        tuple(a[keep] for a in arrays), lambda s, c, bs, bc, axis: s.sum(axis=axis) / c.sum(axis=axis) - bs.sum(axis=axis) / bc.sum(axis=axis), seed
    )


def difference_interval(a: Sequence[float], b: Sequence[float], seed: int = 0) -> list[float] | None:
    """Interval of ``mean(a - b)`` for paired units (two models on the same documents): the
    documents' own difficulty cancels, so this is tighter than comparing two intervals."""
    return mean_interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), seed)
