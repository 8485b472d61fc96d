"""The doctor's view of a Moshi `LMModel` (`families.probe.ModelProbe`)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..probe import ModelProbe
from .convert import settings
from .loss import training_loss


def _positions(batch: dict) -> Tensor:
    """Each row is one conversation from step 0; steps where every stream is missing (-1) are padding."""
    codes = batch["codes"]
    steps = torch.arange(codes.shape[-1], device=codes.device).expand(codes.shape[0], -1)
    return torch.where((codes != -1).any(1), steps, -1)


def _logits(lm: nn.Module, batch: dict) -> Tensor:
    """The text logits and the model's audio logits, ``[B, T, (1 + dep_q) * card]`` (the positions the
    delays leave empty at 0)."""
    with torch.no_grad():
        out = lm(batch["codes"])
    text = out.text_logits[:, 0].float().nan_to_num(0)
    audio = out.logits.float().nan_to_num(0).permute(0, 2, 1, 3).flatten(2)
    return torch.cat([text, audio], -1)


def _causality_gap(lm: nn.Module, batch: dict) -> float:
    """How far changing the codes of the middle step moves the text logits of the steps up to it.

    The temporal transformer (where the TTT layers are) reads the codes of step t - 1 at step t,
    so its outputs, and the text logits, of steps 0..t must not move. (Audio logits are not
    compared: by moshi's delays, the depformer at a step reads later text on purpose.)"""
    codes = batch["codes"]
    t = codes.shape[-1] // 2
    changed = codes.clone()
    changed[:, :, t] = torch.where(codes[:, :, t] >= 0, (codes[:, :, t] + 1) % 2, codes[:, :, t])
    with torch.no_grad():
        before, after = lm(codes).text_logits, lm(changed).text_logits
    return (after[..., : t + 1, :] - before[..., : t + 1, :]).float().nan_to_num(0).abs().max().item()


PROBE = ModelProbe(
    positions=_positions,
    logits=_logits,
    loss=lambda lm, batch: training_loss(lm, batch["codes"])["loss"],
    causality_gap=_causality_gap,
    original_mlp=lambda base, idx: base.transformer.layers[idx].gating,
    settings=settings,
)
