"""What clipping kept of the fast-weight updates, in numbers and in one line.

Clipping scales chunk update ``dW_i`` by ``c_i = min(1, tau / ||dW_i||_F)``: ``c_i = 1`` leaves it
untouched, ``c_i`` near 0 removes it. The fast-weight term of every later output is linear in the
sum of the kept updates, so a mean ``c`` of 0.01 leaves about a hundredth of what the TTT layers
were trained to add: the model is then, to within that share, the model without TTT. At the
paper's tau = 1e-5 this is what happened to every model measured here (docs/clipping.md), and
nothing said so; `UpdateRecord.warning` now does, wherever updates are recorded (the layer's first
clipped forward, the doctor, `ittt eval`, the training telemetry).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Below this mean clip factor, clipping removes nearly all of the update (more than 95% of it):
# the TTT term left is under a twentieth of the trained one, inside the noise of any paired
# comparison we ran (the demo's TTT effect is 0.04 nats; a twentieth is 0.002).
NEARLY_ALL_REMOVED = 0.05


@dataclass(frozen=True)
class UpdateRecord:
    """The chunk updates of one TTT layer in one forward: `norms` (``||dW_i||_F`` before clipping),
    `factors` (the share of each that clipping kept), with the layer's settings to read them by."""

    layer: int | None
    norms: Tensor  # [n] float64
    factors: Tensor  # [n] float64, 1 where not clipped
    tau: float | None  # the absolute bound the op applied (None: no clipping)
    lr: float
    w0_norm: float  # ||W0||_F of the down projection

    @property
    def updates(self) -> int:
        return int(self.norms.numel())

    def mean_factor(self) -> float:
        """The mean clip factor over the updates (1.0 when there were none, or no clipping)."""
        return float(self.factors.mean()) if self.updates else 1.0

    def quantiles(self, qs: tuple[float, ...] = (0.0, 0.1, 0.5, 0.9, 1.0)) -> list[float]:
        """Quantiles of the clip factor (min, p10, median, p90, max by default)."""
        if not self.updates:
            return [1.0] * len(qs)
        return torch.quantile(self.factors, torch.tensor(qs, dtype=torch.float64)).tolist()

    def relative_norms(self) -> Tensor:
        """``eta ||dW_i|| / ||W0||`` per update: how far one chunk would move the down projection,
        as a share of its norm (the quantity `clip_mode: relative` bounds)."""
        return self.lr * self.norms / max(self.w0_norm, 1e-30)

    def warning(self) -> str | None:
        """One line when clipping removes nearly all of the update, naming the setting to change."""
        if self.tau is None or not self.updates or self.mean_factor() >= NEARLY_ALL_REMOVED:
            return None
        median_norm = float(self.norms.median())
        where = "a TTT layer" if self.layer is None else f"TTT layer {self.layer}"
        return (
            f"{where}: clipping keeps {self.mean_factor():.2g} of each fast-weight update on average "
            f"(tau {self.tau:.3g}, median update norm {median_norm:.3g}): TTT is effectively off; raise clip_tau "
            f"(to {median_norm:.2g} to keep half the updates whole), use clip_mode: relative, or set clip_tau null"
        )


def summary(records: list[UpdateRecord]) -> str:
    """One line over layers: updates, mean and range of the clip factor."""
    if not records or not any(r.updates for r in records):
        return "no fast-weight update in this batch (rows shorter than two chunks?)"
    factors = torch.cat([r.factors for r in records])
    norms = torch.cat([r.norms for r in records])
    ratios = torch.cat([r.relative_norms() for r in records])
    taus = sorted({r.tau for r in records if r.tau is not None})
    setting = "clipping off" if not taus else "tau " + ", ".join(f"{t:.3g}" for t in taus)
    return (
        f"{setting}: {factors.numel()} chunk updates, clip factor mean {float(factors.mean()):.3g} "
        f"(min {float(factors.min()):.3g}, median {float(factors.median()):.3g}); update norm median {float(norms.median()):.3g}, "
        f"eta ||dW|| / ||W0|| median {float(ratios.median()):.3g}"
    )
