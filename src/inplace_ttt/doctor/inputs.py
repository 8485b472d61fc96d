"""The doctor on saved files (`ittt doctor`): the family that saved a model folder reads the model,
its data and its base (`families.read_saved`); the data is cut into rows of a few chunks, and the
checks run on them."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from ..families import SavedFiles, read_saved, ttt_layers
from .checks import Report, doctor


@dataclass(frozen=True)
class DoctorInputs:
    model: nn.Module
    batch: Tensor  # rows of the data: token ids [B, T] (transformers) or codes [B, K, T] (Moshi)
    base: nn.Module | None
    description: str  # the batch's shape in words: "2 x 12 tokens"


def load_inputs(files: SavedFiles, *, length: int | None = None, rows: int = 2) -> DoctorInputs:
    """The saved model of `files`, its base, and `rows` rows of `length` tokens (Moshi: steps) from
    the start of its data; `length` defaults to three of the model's longest chunks."""
    saved = read_saved(files)
    if length is None:
        length = 3 * max(layer.chunk_size for _, layer in ttt_layers(saved.model))
    rows = _rows(length, saved.sequence.shape[-1], rows, files.data)
    batch = saved.sequence[..., : rows * length].unflatten(-1, (rows, length)).movedim(-2, 0)
    return DoctorInputs(saved.model, batch, saved.base, f"{rows} x {length} {saved.unit}")


def check_saved(files: SavedFiles, *, length: int | None = None, rows: int = 2, inference: bool = False) -> tuple[Report, str]:
    """`doctor` on the saved model of `files` and a batch of its data (`load_inputs`), as training
    data or, with `inference`, as a model for inference (clipping and short data allowed); returns
    the report and the batch's shape in words."""
    inputs = load_inputs(files, length=length, rows=rows)
    inputs.model.train(not inference)
    return doctor(inputs.model, inputs.batch, inputs.base, training=not inference), inputs.description


def _rows(length: int, steps: int, wanted: int, data: str) -> int:
    """Rows of `length` from `steps` of data: `wanted`, or as many as the data holds (said so)."""
    if length < 1 or wanted < 1:
        raise ValueError(f"--length and --rows must be >= 1; got {length} and {wanted}")
    rows = min(wanted, steps // length)
    if rows < 1:
        raise ValueError(f"--data {data} holds {steps} tokens (Moshi: steps), fewer than one row of --length {length}: give more data or a smaller --length")
    if rows < wanted:
        print(f"doctor: --data {data} holds {steps} tokens (Moshi: steps), enough for {rows} of the {wanted} rows of --rows", file=sys.stderr)
    return rows
