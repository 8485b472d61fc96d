"""The doctor's view of a transformers causal LM (`families.probe.ModelProbe`)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..probe import ModelProbe
from .context import ttt_positions
from .convert import decoder_layers, settings


def _positions(batch: dict) -> Tensor:
    ids = batch["input_ids"]
    return ttt_positions(ids.shape[0], ids.shape[1], batch.get("attention_mask"), batch.get("position_ids"), 0, ids.device)


def _logits(model: nn.Module, batch: dict) -> Tensor:
    with torch.no_grad():
        return model(**batch, use_cache=False).logits.float()


def _loss(model: nn.Module, batch: dict) -> Tensor:
    """The next-token loss of the batch's tokens; padding (`attention_mask` 0 or position -1) is no target."""
    labels = batch["input_ids"].masked_fill(_positions(batch) < 0, -100)
    return model(**batch, labels=labels, use_cache=False).loss


def _causality_gap(model: nn.Module, batch: dict) -> float:
    """How far changing the last token moves the logits of the earlier positions."""
    ids = batch["input_ids"]
    t = ids.shape[1] - 1
    if t == 0:
        return 0.0
    changed = dict(batch, input_ids=ids.clone())
    changed["input_ids"][:, t] = (ids[:, t] + 1) % max(int(ids.max()) + 1, 2)
    return (_logits(model, changed)[:, :t] - _logits(model, batch)[:, :t]).abs().max().item()


PROBE = ModelProbe(
    positions=_positions,
    logits=_logits,
    loss=_loss,
    causality_gap=_causality_gap,
    original_mlp=lambda base, idx: decoder_layers(base)[1][idx].mlp,
    settings=settings,
)
