"""`Family`: what the generic code (`inplace_ttt.convert`, `set_clip_tau`, the doctor, the trainer)
calls for a model of a family; each family package defines one (`families.hf.FAMILY`,
`families.moshi.FAMILY`) and `families.family_of` finds a model's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..layer import InPlaceTTTMLP
from .probe import ModelProbe
from .saved import Saved, SavedFiles


@dataclass(frozen=True)
class Family:
    name: str
    convert: Callable[..., nn.Module]  # (model, TTTConfig, **family options) -> the model, converted in place (exact warm start)
    ttt_layers: Callable[[nn.Module], Iterator[tuple[int, InPlaceTTTMLP]]]  # converted model -> (layer index, TTT layer)
    settings: Callable[[nn.Module], dict[str, Any]]  # converted model -> its TTT settings as saved, training record included
    set_context_parallel: Callable[[nn.Module, Any], None]  # (model, process group or None): split sequences along time
    probe: ModelProbe  # how the doctor runs a model of the family
    read_saved: Callable[[SavedFiles], Saved]  # a saved model of the family, its data and its base, read for the doctor
