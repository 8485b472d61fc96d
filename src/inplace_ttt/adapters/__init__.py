"""Model families: where TTT layers go in a model and how they get positions and state.

Each family's adapter module (`hf`: transformers causal LMs; `moshi`: Kyutai's `LMModel`, an
optional install) provides the functions of `protocol.Adapter`; `adapter_of` picks the module
for a model, and the functions here work the same for both families.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import torch.nn as nn

from ..config import TTTConfig
from . import hf
from .hf import decoder_layers, from_pretrained, is_converted, ttt_positions
from .release import export_release

MOSHI_TTT_WEIGHTS = "ttt.safetensors"  # beside moshi's model.safetensors: our weights and settings


def _is_moshi_lm(model: nn.Module) -> bool:
    """A moshi `LMModel`, recognised without importing moshi (an optional install)."""
    return any(c.__name__ == "LMModel" and c.__module__.startswith("moshi.") for c in type(model).__mro__)


def adapter_of(model: nn.Module) -> ModuleType:
    """The adapter module of `model`'s family (see `protocol.Adapter`)."""
    if _is_moshi_lm(model):
        from . import moshi

        return moshi
    return hf


def convert(model: nn.Module, config: TTTConfig, **options) -> nn.Module:
    """Put In-Place TTT into a transformers causal LM (`adapters.hf.convert`, which takes
    ``cp_group=`` for context parallelism) or a moshi `LMModel` (`adapters.moshi.convert`, which
    takes ``rope_scaling=`` for YaRN), in place."""
    adapter = adapter_of(model)
    if adapter is hf:
        unknown = sorted(set(options) - {"cp_group"})
        if unknown:
            raise TypeError(f"convert() of a transformers model takes only cp_group=, not {unknown}; set YaRN on its config instead")
    return adapter.convert(model, config, **options)


def ttt_layers(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    """`(layer index, TTT layer)` for every TTT layer of a converted model."""
    return adapter_of(model).ttt_layers(model)


def probe(model: nn.Module):
    """How the doctor runs `model` (a `probe.ModelProbe` of its family)."""
    return adapter_of(model).PROBE


def set_context_parallel(model: nn.Module, group) -> None:
    """Split sequences along time across the ranks of `group` (a `torch.distributed` process group;
    None: off); see the family's `set_context_parallel`."""
    adapter_of(model).set_context_parallel(model, group)


def set_clip_tau(model: nn.Module, clip_tau: float | None) -> float | None:
    """Set inference clipping on every TTT layer (and in the saved settings); returns the previous value."""
    TTTConfig(clip_tau=clip_tau)  # validates
    saved = adapter_of(model).settings(model)
    previous = saved["clip_tau"]
    for _, layer in ttt_layers(model):
        layer.clip_tau = clip_tau
    saved["clip_tau"] = clip_tau
    return previous


@contextlib.contextmanager
def clip_tau(model: nn.Module, value: float | None):
    """``with clip_tau(model, 1e-5): model.generate(...)``: clipping for a block, restored after."""
    previous = set_clip_tau(model, value)
    try:
        yield model
    finally:
        set_clip_tau(model, previous)


__all__ = [
    "adapter_of",
    "convert",
    "from_pretrained",
    "export_release",
    "set_clip_tau",
    "clip_tau",
    "set_context_parallel",
    "ttt_layers",
    "probe",
    "decoder_layers",
    "is_converted",
    "ttt_positions",
]
