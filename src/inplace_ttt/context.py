"""`TTTContext`: what the TTT layers of a model need about one forward, built once per forward.

A decoder layer hands its MLP nothing but the hidden states, yet a TTT layer needs where the
documents and chunks of the batch are, the token embeddings when its target reads them, and,
while streaming, its fast-weight state. The model family builds one `TTTContext` from the
forward's own arguments (`families.hf.context`, `families.moshi.convert`) and hands it to every
TTT layer as its ``context`` argument; the segments are found once per chunk size and shared by
all layers, and the op takes them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .ops.segments import Segments, find_segments
from .ops.state import FastWeightState


@dataclass(frozen=True)
class TTTContext:
    """One model forward, as its TTT layers see it.

    positions: ``[B, T]`` TTT positions (0 starts a document, negative is padding; see
        `ops.segments`); None: each row is one document at ``0..T-1``, or continues `state_of`'s.
    embeddings: ``[B, T, d]`` the token embeddings, for layers whose target reads them.
    state_of: the streaming state of a layer, by its layer index (None: not streaming).
    """

    positions: Tensor | None = None
    embeddings: Tensor | None = None
    state_of: Callable[[int], FastWeightState] | None = None
    _segments: dict[int, Segments] = field(default_factory=dict, repr=False, compare=False)

    def segments(self, chunk_size: int, batch: int, length: int, device: torch.device) -> Segments:
        """The batch's documents and chunks of `chunk_size`, found at the first layer that asks."""
        found = self._segments.get(chunk_size)
        if found is None or found.shape != (batch, length):
            found = self._segments[chunk_size] = find_segments(self.positions, batch, length, chunk_size, device)
        return found

    def state(self, layer_idx: int | None) -> FastWeightState | None:
        return self.state_of(layer_idx) if self.state_of is not None else None
