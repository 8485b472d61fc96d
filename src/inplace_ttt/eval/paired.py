"""Paired differences between two models scored on the same units (documents, samples).

The difference of the two models' means, with a 95% interval from resampling the units
(`intervals`): each unit's own difficulty cancels, so a difference far smaller than either
model's interval can still be told from zero. The one place that `ittt eval`'s report, the
demo and any other comparison get it from.
"""

from __future__ import annotations

from collections.abc import Sequence

from .intervals import difference_interval, ratio_interval


def paired_mean(a: Sequence[float | None], b: Sequence[float | None], seed: int = 0, scale: float = 1.0) -> dict:
    """``mean(a - b)`` over the units both models have a value for (None: none, e.g. a document too
    short for a context), times `scale` (100: percentage points), with its 95% interval and the
    number of units."""
    if len(a) != len(b):
        raise ValueError(f"paired units differ in number: {len(a)} against {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return {"difference": None, "interval": None, "units": 0}
    xs, ys = [scale * x for x, _ in pairs], [scale * y for _, y in pairs]
    return {"difference": sum(x - y for x, y in zip(xs, ys)) / len(pairs), "interval": difference_interval(xs, ys, seed), "units": len(pairs)}


def paired_ratio(sums_a: Sequence[float], sums_b: Sequence[float], counts: Sequence[float], seed: int = 0) -> dict:
    """The difference of two token-weighted mean losses over the same documents and tokens,
    ``sum(sums_a - sums_b) / sum(counts)`` (each document contributes its summed token losses and
    its token count), with its 95% interval from resampling documents."""
    if not len(sums_a) == len(sums_b) == len(counts):
        raise ValueError(f"paired documents differ in number: {len(sums_a)}, {len(sums_b)}, {len(counts)} counts")
    diffs = [x - y for x, y in zip(sums_a, sums_b)]
    tokens = sum(counts)
    if not tokens:
        return {"difference": None, "interval": None, "units": 0}
    return {"difference": sum(diffs) / tokens, "interval": ratio_interval(diffs, counts, seed), "units": sum(1 for c in counts if c > 0)}
