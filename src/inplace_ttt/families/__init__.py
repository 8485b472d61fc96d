"""Model families, each a package that owns its formats: `hf` (transformers causal LMs) and `moshi`
(Kyutai's `LMModel`, an optional install). Each defines a `protocol.Family`; `family_of` finds a
model's, `family_of_folder` a saved model folder's, and the functions here work the same for every family."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch.nn as nn

from ..config import TTTConfig
from ..layer import InPlaceTTTMLP
from .protocol import Family
from .saved import Saved, SavedFiles


def _is_moshi_lm(model: nn.Module) -> bool:
    """A moshi `LMModel`, recognised without importing moshi (an optional install)."""
    return any(c.__name__ == "LMModel" and c.__module__.startswith("moshi.") for c in type(model).__mro__)


def family_of(model: nn.Module) -> Family:
    """The family of `model`: moshi's for an `LMModel`, transformers' for any other model."""
    if _is_moshi_lm(model):
        from .moshi.family import FAMILY
    else:
        from .hf import FAMILY
    return FAMILY


def family_of_folder(path: str | Path) -> Family:
    """The family that saved the model folder `path`: moshi's for one holding a ttt.safetensors
    (`moshi.io.TTT_WEIGHTS`), transformers' for any other."""
    from .moshi.io import TTT_WEIGHTS

    if (Path(path) / TTT_WEIGHTS).is_file():
        from .moshi.family import FAMILY
    else:
        from .hf import FAMILY
    return FAMILY


def read_saved(files: SavedFiles) -> Saved:
    """A saved converted model, its data and its base model, read by the family that saved it."""
    return family_of_folder(files.model_dir).read_saved(files)


def convert(model: nn.Module, config: TTTConfig, **options) -> nn.Module:
    """Put In-Place TTT into a transformers causal LM (options: ``cp_group=`` for context
    parallelism) or a moshi `LMModel` (``rope_scaling=`` for YaRN, ``cp_group=``), in place."""
    return family_of(model).convert(model, config, **options)


def ttt_layers(model: nn.Module) -> Iterator[tuple[int, InPlaceTTTMLP]]:
    """`(layer index, TTT layer)` for every TTT layer of a converted model."""
    return family_of(model).ttt_layers(model)


def probe(model: nn.Module):
    """How the doctor runs `model` (a `probe.ModelProbe` of its family)."""
    return family_of(model).probe


def set_context_parallel(model: nn.Module, group) -> None:
    """Split sequences along time across the ranks of `group` (a `torch.distributed` process group;
    None: off); see the family's `set_context_parallel`."""
    family_of(model).set_context_parallel(model, group)


def set_clip_tau(model: nn.Module, clip_tau: float | None, clip_mode: str | None = None) -> float | None:
    """Set inference clipping for every TTT layer of `model` (in the `TTTConfig` they share, which
    is what the model saves), and how `clip_tau` is read (`TTTConfig.clip_mode`; None: as it is);
    returns the previous `clip_tau`."""
    checked = TTTConfig(clip_tau=clip_tau, **({} if clip_mode is None else {"clip_mode": clip_mode}))  # validates
    family = family_of(model)
    configs = {id(layer.config): layer.config for _, layer in family.ttt_layers(model)}
    if not configs:
        raise ValueError(f"{type(model).__name__} has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    previous = next(iter(configs.values())).clip_tau
    for config in configs.values():
        config.clip_tau = checked.clip_tau
        if clip_mode is not None:
            config.clip_mode = clip_mode
    family.settings(model)  # the record the model saves (config.json, ttt.safetensors) follows
    return previous


@contextlib.contextmanager
def clip_tau(model: nn.Module, value: float | None, clip_mode: str | None = None):
    """``with clip_tau(model, 1e-5): model.generate(...)``: clipping for a block, restored after."""
    mode = next(iter(family_of(model).ttt_layers(model)), (None, None))[1]
    previous_mode = None if mode is None else mode.config.clip_mode
    previous = set_clip_tau(model, value, clip_mode)
    try:
        yield model
    finally:
        set_clip_tau(model, previous, previous_mode)


__all__ = [
    "Family",
    "Saved",
    "SavedFiles",
    "family_of",
    "family_of_folder",
    "read_saved",
    "convert",
    "ttt_layers",
    "probe",
    "set_context_parallel",
    "set_clip_tau",
    "clip_tau",
]
