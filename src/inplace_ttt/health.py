"""Whether In-Place TTT is doing anything, or harm, in one line with the setting to change.

Two numbers decide it. The fast-weight ratio ``eta ||S|| / ||W0||`` (a layer's `fast_ratio`: how
far the fast weight has moved the down projection by the end of a row), and, where it was measured,
the loss gain ``loss(TTT off) - loss(TTT on)`` on the same batch (positive: TTT helps there).

The bounds, from runs measured in this project (issue 26, docs/clipping.md):
- inert below `INERT_RATIO` = 1%: a real 135M checkpoint trained with the README's recipe stayed
  at <= 0.34% and its loss moved by 0.15% (-0.0026 nats); the demo's working run passes 2% by
  step 7 and holds 13-16% (its TTT effect: 0.04 nats);
- harmful above `HARMFUL_RATIO` = 1 (the fast term as large as the down projection it adds to), or
  when TTT costs more than `HARMFUL_NATS` = 0.1 nats on the batch it just trained on (more than
  twice the demo's whole TTT effect; the issue's blown-up run was 2.8 nats behind its baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

INERT_RATIO = 0.01
HARMFUL_RATIO = 1.0
HARMFUL_NATS = 0.1


@dataclass(frozen=True)
class Settings:
    """The settings a verdict names (None: not known where it is made)."""

    ttt_lr: float
    chunk_size: int
    ttt_params_learning_rate: float | None = None
    clip_tau: float | None = None


def verdict(fast_ratios: dict[int, float], settings: Settings, *, after: str, loss_gain: float | None = None) -> tuple[str, str] | None:
    """``("inert" | "harmful", line)`` or None when neither holds. `fast_ratios`: per TTT layer;
    `after`: when it was measured, in words ("after 8 steps"); `loss_gain`: loss without TTT minus
    loss with it, on the same batch, where measured."""
    if not fast_ratios:
        return None
    layer, top = max(fast_ratios.items(), key=lambda kv: kv[1])
    gain = "" if loss_gain is None else f", loss with TTT {-loss_gain:+.3g} nats against TTT off on the same batch"
    s = settings
    rate = (
        f"train.ttt_params_learning_rate (now {s.ttt_params_learning_rate:g})" if s.ttt_params_learning_rate is not None else "train.ttt_params_learning_rate"
    )
    if top > HARMFUL_RATIO or (loss_gain is not None and -loss_gain > HARMFUL_NATS):
        return "harmful", (
            f"TTT is harmful {after}: the fast weight of layer {layer} reached {top:.3g} x ||W_down|| (bound {HARMFUL_RATIO:g}){gain}; "
            f"lower {rate} or ttt.ttt_lr (now {s.ttt_lr:g})"
        )
    if top < INERT_RATIO:
        clip = f", or unset clip_tau (now {s.clip_tau:g})" if s.clip_tau is not None else ""
        return "inert", (
            f"TTT is inert {after}: the fast weights stay at <= {top:.2%} of ||W_down|| (bound {INERT_RATIO:.0%}){gain}; "
            f"raise {rate} or ttt.ttt_lr (now {s.ttt_lr:g}), or lower ttt.chunk_size (now {s.chunk_size}: more of each row reads an update){clip}"
        )
    return None
