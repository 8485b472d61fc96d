"""`ModelProbe`: how the doctor runs a model family's model on a batch.

The doctor's checks are the same for every family (`inplace_ttt.doctor`); what differs is how
a batch is fed, what the logits and the training loss are, where a batch's documents are, and
where the original model keeps each MLP. Each adapter describes its family with one probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor


@dataclass(frozen=True)
class ModelProbe:
    positions: Callable[[dict], Tensor]  # batch -> [B, T] TTT positions (0 starts a document, -1 is padding)
    logits: Callable[[nn.Module, dict], Tensor]  # (model, batch) -> float logits [B, T, ...], no gradient
    loss: Callable[[nn.Module, dict], Tensor]  # (model, batch) -> the training loss, with gradient
    causality_gap: Callable[[nn.Module, dict], float]  # (model, batch) -> how far one step's change moves earlier outputs (0: causal)
    original_mlp: Callable[[nn.Module, int], nn.Module]  # (unconverted model, layer index) -> its MLP there
    settings: Callable[[nn.Module], dict]  # converted model -> the TTT settings saved with it (with its training record)
