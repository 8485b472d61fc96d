"""The transformers family of `ittt train`: a causal LM and text documents, for the shared engine.

The model is a saved In-Place TTT model as it is, or a base model converted with the run's
`ttt` section (left as it is with ``ttt: null``, the fair baseline). The documents are
tokenized with the model's tokenizer and packed into rows (`train.data`); the Trainer trains the
model itself (its forward computes the loss from ``labels``), and `final/` is a
`save_pretrained` directory with the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..adapters import convert, from_pretrained, ttt_layers
from ..adapters.hf import is_ttt_checkpoint
from ..doctor import doctor
from .config import RunConfig
from .data import build_dataset, collate
from .modes import unwrap
from .trainer import RunError, RunParts, require_two_chunks

CONFIG = RunConfig


def load_model(config: RunConfig, dtype: torch.dtype) -> nn.Module:
    """The model to train: a saved In-Place TTT model as it is, or a base model converted
    (left as it is with ``ttt: null``, the baseline without TTT)."""
    if is_ttt_checkpoint(config.model):
        if config.ttt is None:
            raise RunError(f"ttt: null trains a model without TTT, but {config.model} is an In-Place TTT checkpoint")
        return from_pretrained(config.model, dtype=dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
    except OSError as e:
        raise RunError(f"model: cannot load {config.model!r}: {e}") from None
    return model if config.ttt is None else convert(model, config.ttt)


def prepare(config: RunConfig) -> RunParts:
    """Tokenizer, data, model; checked against each other before anything trains."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
    except OSError as e:
        raise RunError(f"tokenizer: cannot load {config.tokenizer or config.model!r}: {e}") from None
    train_rows = build_dataset(config.data, tokenizer, config.data.train)  # data errors first: nothing loaded yet
    eval_rows = build_dataset(config.data, tokenizer, config.data.eval) if config.data.eval else None
    model = load_model(config, torch.float32)
    layers = dict(ttt_layers(model))
    if layers:
        require_two_chunks(config.data.row_length, layers)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    for rows in (train_rows, eval_rows or train_rows):
        top = int(rows.input_ids.max())
        if top >= vocab_rows:
            raise RunError(
                f"tokenizer mismatch: the data has token id {top} but the model's embedding has {vocab_rows} rows; "
                "use the model's own tokenizer"
            )
    use_cache = model.config.use_cache  # the Trainer turns it off for training

    def save_final(trained: nn.Module, directory: Path) -> None:
        trained.config.use_cache = use_cache
        trained.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    fresh = not is_ttt_checkpoint(config.model)  # converted here: it must start as the base model

    def first_batch_doctor(module: nn.Module, batch: dict, optimizer):
        inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
        return doctor(unwrap(module), inputs, optimizer=optimizer, training=True, fresh=fresh)

    return RunParts(
        module=model, layers=layers, train_dataset=train_rows, eval_dataset=eval_rows, collate=collate,
        save_final=save_final, doctor=first_batch_doctor, processing_class=tokenizer,
    )
