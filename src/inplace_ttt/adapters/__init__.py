"""Model families: where TTT layers go in a model and how they get positions and state."""

from __future__ import annotations

from typing import Iterator

import torch.nn as nn

from ..config import TTTConfig
from . import hf
from .hf import clip_tau, decoder_layers, from_pretrained, is_converted, set_clip_tau, set_context_parallel, ttt_positions
from .release import export_release


MOSHI_TTT_WEIGHTS = "ttt.safetensors"  # beside moshi's model.safetensors: our weights and settings


def _is_moshi_lm(model: nn.Module) -> bool:
    """A moshi `LMModel`, recognised without importing moshi (an optional install)."""
    return any(c.__name__ == "LMModel" and c.__module__.startswith("moshi.") for c in type(model).__mro__)


def convert(model: nn.Module, config: TTTConfig, **options) -> nn.Module:
    """Put In-Place TTT into a transformers causal LM (`adapters.hf.convert`, which takes
    ``cp_group=`` for context parallelism) or a moshi `LMModel` (`adapters.moshi.convert`, which
    takes ``rope_scaling=`` for YaRN), in place."""
    if _is_moshi_lm(model):
        from . import moshi

        return moshi.convert(model, config, **options)
    unknown = sorted(set(options) - {"cp_group"})
    if unknown:
        raise TypeError(f"convert() of a transformers model takes only cp_group=, not {unknown}; set YaRN on its config instead")
    return hf.convert(model, config, **options)


def probe(model: nn.Module):
    """How the doctor runs `model` (a `probe.ModelProbe` of its family)."""
    if _is_moshi_lm(model):
        from . import moshi

        return moshi.PROBE
    return hf.PROBE


def ttt_layers(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    """`(layer index, TTT layer)` for every TTT layer of a converted model."""
    if _is_moshi_lm(model):
        from . import moshi

        return moshi.ttt_layers(model)
    return hf.ttt_layers(model)


__all__ = ["convert", "from_pretrained", "export_release", "set_clip_tau", "clip_tau", "set_context_parallel", "ttt_layers", "probe", "decoder_layers", "is_converted", "ttt_positions"]
