"""A saved Moshi model (a `final/`: moshi's model.safetensors beside our ttt.safetensors), one
conversation's codes, and the base model.safetensors: what the doctor checks (`families.saved`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...files import read_json_object
from ..saved import Saved, SavedFiles
from .codes import read_conversation
from .io import TTT_WEIGHTS, LMLoadError, load_base, load_moshi


def read_saved(files: SavedFiles) -> Saved:
    """The model in `files.model_dir` (float32, on the CPU) built with the LMModel keyword arguments
    of `files.lm_kwargs`, the codes ``[K, T]`` of the conversation `files.data`, and `files.base`
    if given."""
    lm_kwargs = read_json_object(files.lm_kwargs) if files.lm_kwargs is not None else None
    folder = Path(files.model_dir)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{files.model_dir}: no model.safetensors beside its {TTT_WEIGHTS} (a Moshi final/ holds both)")
    try:
        lm = load_moshi(weights, lm_kwargs, ttt_file=folder / TTT_WEIGHTS, dtype=torch.float32)
    except LMLoadError as e:
        raise ValueError(f"{weights} does not load with the LMModel keyword arguments {files.lm_kwargs or '(Moshi 7B defaults)'}: {e}") from None
    codes = read_conversation(Path(files.data), lm.num_codebooks, lm.text_card, lm.card)
    base = load_base(files.base, lm_kwargs) if files.base else None
    return Saved(lm, codes, base, "steps")
