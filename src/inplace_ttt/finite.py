"""Non-finite numbers (NaN, infinity): weights holding them are refused by name, and JSON files
write them as null.

A model whose training diverged computes NaN everywhere; loaded as it is, it evaluates to
empty results and generates one token repeated, without an error. Every loader and the doctor
therefore refuse it, naming the tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Each tensor holding a NaN or an infinity, as ``name (N NaN, M inf of T values)`` (tensors not loaded yet, on "meta", are skipped)."""
    found = []
    with torch.no_grad():
        for name, tensor in named:
            if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
                nan = int(torch.isnan(tensor).sum())
                found.append(f"{name} ({nan} NaN, {int(torch.isinf(tensor).sum())} inf of {tensor.numel()} values)")
    return found


def require_finite(named: Iterable[tuple[str, torch.Tensor]], source: object) -> None:
    """Refuse weights holding a NaN or an infinity, naming the tensors (`source`: the model's path)."""
    bad = nonfinite_tensors(named)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"{source}: non-finite weights (NaN or infinity) in {', '.join(bad[:3])}{more}: the model is broken "
            "(a training run that diverged, say); use an earlier checkpoint"
        )


def finite_json(value):
    """`value` with every NaN or infinity as None: JSON has no NaN (a bare NaN makes a file unreadable to strict readers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
