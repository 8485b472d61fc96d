"""A saved model and its data, read from files the way the doctor checks them: `SavedFiles` names
the files, and each family's `Family.read_saved` loads them into a `Saved` (the converted model,
its data as one sequence, the unconverted base model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor


@dataclass(frozen=True)
class SavedFiles:
    model_dir: str  # a converted model's folder: transformers' save_pretrained, or a Moshi final/ (model.safetensors + ttt.safetensors)
    data: str  # transformers: documents (.txt, .jsonl or .parquet); Moshi: one conversation's codes file (.safetensors)
    base: str | None = None  # the unconverted model: transformers, a folder or hub id; Moshi, its model.safetensors
    base_gguf_file: str | None = None  # transformers: the base model is this GGUF file in `base` (read dequantized)
    lm_kwargs: str | None = None  # Moshi: a JSON file of LMModel keyword arguments (None: Moshi 7B's)
    text_field: str = "text"  # transformers: the field of a .jsonl / .parquet row that holds its text


@dataclass(frozen=True)
class Saved:
    model: nn.Module
    sequence: Tensor  # the data in one piece, time last: token ids [T] (transformers) or codes [K, T] (Moshi)
    base: nn.Module | None
    unit: str  # what one time step of `sequence` is called: "tokens", "steps"
