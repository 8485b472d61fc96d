"""`Adapter`: what a model family's adapter module provides, the same for every family.

`adapters.hf` (transformers causal LMs) and `adapters.moshi` (Kyutai's `LMModel`) each define
these functions at module level; `adapters` picks the module for a model (`adapter_of`) and the
top-level functions (`inplace_ttt.convert`, `set_clip_tau`, `set_context_parallel`, ...) work the
same for both. The settings are the model's own record of its `TTTConfig` (what `save` writes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch.nn as nn

from ..layer import InPlaceTTTMLP
from .probe import ModelProbe


class Adapter(Protocol):
    PROBE: ModelProbe  # how the doctor runs a model of the family

    def owns(self, model: nn.Module) -> bool:
        """Whether `model` is of this family."""

    def convert(self, model: nn.Module, config, **options) -> nn.Module:
        """Put In-Place TTT into `model` in place (exact warm start)."""

    def ttt_layers(self, model: nn.Module) -> Iterator[tuple[int, InPlaceTTTMLP]]:
        """`(layer index, TTT layer)` of a converted model."""

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """The converted model's TTT settings, as saved (the dict itself: changes are kept)."""

    def set_context_parallel(self, model: nn.Module, group) -> None:
        """Split sequences along time across `group` (None: off)."""

    def save(self, model: nn.Module, directory: str | Path) -> Path:
        """Write a converted model (its weights, TTT weights and settings) into `directory`."""

    def load(self, directory: str | Path, **options) -> nn.Module:
        """Read back what `save` wrote."""
