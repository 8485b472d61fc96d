"""Training that goes non-finite stops at that step, before anything broken is saved.

A learning rate that blows up (or an infinite loss weight) makes the loss or a gradient NaN; one
optimizer step later every weight is NaN, and a run that went on would save NaN checkpoints and a
NaN `final/` and exit 0. The engine checks the loss of every forward and the gradients of every
step before the optimizer uses them (`TTTTrainer`), and the weights before every save, and stops
with one `RunError`: the step, what went non-finite, the last complete checkpoint and the command
that resumes from it with a lower learning rate.

No step is skipped and tolerated, as some trainers do: a NaN is rarely a one-off (a learning rate
too high gives another a few steps later), and a skipped step would hide the cause while the
schedule moves on. The exception is fp16 loss scaling (`train.fp16`), whose scaler overflows on
purpose while it finds its scale and skips those steps itself: there the gradients are not
checked, the loss still is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from ..finite import nonfinite_tensors
from ..layer import is_ttt_param
from .run_dir import RunError, last_complete_checkpoint

GROUPS = ("the TTT parameters", "the other parameters")  # the two gradient groups (clipped apart by default)


def nonfinite_loss(loss: torch.Tensor, parts: dict[str, float]) -> str | None:
    """What is wrong with a forward's loss, or None: its value and the parts the module reports (Moshi's text and audio losses)."""
    value = float(loss.detach())
    if math.isfinite(value):
        return None
    return f"the loss is {value}" + (f" ({', '.join(f'{k} {v:.4g}' for k, v in parts.items())})" if parts else "")


def nonfinite_gradient(named_parameters: Iterable[tuple[str, nn.Parameter]], norms: tuple[float, float]) -> str | None:
    """What is wrong with a step's gradients given their `norms` per group (`telemetry.group_norms`), or None:
    the group whose norm is not finite and its first parameter holding a NaN or an infinity."""
    bad = [group for group, norm in zip(GROUPS, norms) if not math.isfinite(norm)]
    if not bad:
        return None
    grads = [(name, p.grad) for name, p in named_parameters if p.grad is not None and GROUPS[0 if is_ttt_param(name) else 1] in bad]
    first = nonfinite_tensors(grads)[:1]
    return f"the gradient of {' and of '.join(bad)} is not finite" + (f" (first: {first[0]})" if first else "")


def nonfinite_weights(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> str | None:
    """What is wrong with the trained weights, or None."""
    bad = nonfinite_tensors((name, p) for name, p in named_parameters if p.requires_grad)
    return f"the weights hold NaN or infinity: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}" if bad else None


def stopped(step: int, problem: str, output_dir: str | Path, learning_rates: dict[str, float | None]) -> RunError:
    """The one message of a run stopped at `step` by `problem`: nothing saved after the step before,
    the last complete checkpoint, and the command resuming from it at a tenth of `learning_rates`
    (`train.` keys: the ones set)."""
    out = Path(output_dir)
    checkpoint = last_complete_checkpoint(out)
    since = f"the last complete checkpoint is {checkpoint}" if checkpoint else "no checkpoint is complete, so --resume starts over from step 0"
    lower = " ".join(f"--train.{key} {rate / 10:g}" for key, rate in learning_rates.items() if rate is not None)
    return RunError(
        f"training stopped at step {step}: {problem}. Nothing was saved from this step on and final/ is not written; {since}. "
        f"Resume with a lower learning rate: ittt train {out / 'config.yaml'} --resume --allow-changes {lower}"
    )
