"""The transformers family of `ittt train`: a causal LM and text documents, for the shared engine.

The model is a saved In-Place TTT model as it is, or a base model converted with the run's
`ttt` section (left as it is with ``ttt: null``, the fair baseline). The documents are
tokenized with the model's tokenizer and packed into rows (`train.data`); the Trainer trains the
model itself (its forward computes the loss from ``labels``), and `final/` is a
`save_pretrained` directory with the tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoTokenizer

from ..config import CONFIG_KEY
from ..doctor import doctor
from ..families import convert, ttt_layers
from ..families.hf import checkpoint_settings, is_converted, is_ttt_checkpoint, load_causal_lm, looks_local
from .config import RunConfig, adopt_ttt
from .data import PackedRows, build_dataset, collate
from .modes import unwrap
from .trainer import RunError, RunParts, require_ttt_context, require_two_chunks

CONFIG = RunConfig


def settle(config: RunConfig) -> RunConfig:
    """The run's config with what its model fixes: an In-Place TTT checkpoint as `model` trains
    with its own TTT settings, so a `ttt` key given that differs from them is refused, and the
    run (and its config.yaml) takes the checkpoint's."""
    if config.ttt is None or not is_ttt_checkpoint(config.model):
        return config
    try:
        saved, base, _, _ = checkpoint_settings(config.model)
    except (ValueError, FileNotFoundError) as e:
        raise RunError(f"model: {e}") from None
    return dataclasses.replace(config, ttt=adopt_ttt(config.ttt, saved, base.num_hidden_layers, f"model {config.model}"))


def model_to_train(config: RunConfig, dtype: torch.dtype) -> nn.Module:
    """The model to train: a saved In-Place TTT model as it is, or a base model converted
    (left as it is with ``ttt: null``, the baseline without TTT)."""
    if is_ttt_checkpoint(config.model):
        if config.gguf_file is not None:
            raise RunError(f"gguf_file: {config.model} is an In-Place TTT checkpoint (safetensors), not a GGUF model's directory")
        if config.ttt is None:
            raise RunError(f"ttt: null trains a model without TTT, but {config.model} is an In-Place TTT checkpoint")
    try:
        model = load_causal_lm(config.model, gguf_file=config.gguf_file, dtype=dtype)
    except (ValueError, FileNotFoundError) as e:
        raise RunError(f"model{_gguf_part(config)}: {e}") from None
    return model if config.ttt is None or is_converted(model) else convert(model, config.ttt)


def load_tokenizer(config: RunConfig):
    """`tokenizer` if given, else the model directory's tokenizer files, else (with `gguf_file`)
    the tokenizer the GGUF file carries."""
    source = config.tokenizer or config.model
    from_gguf = (
        config.tokenizer is None
        and config.gguf_file is not None
        and not any((Path(config.model) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    )
    try:
        return AutoTokenizer.from_pretrained(source, **({"gguf_file": config.gguf_file} if from_gguf else {}))
    except (OSError, ValueError) as e:
        raise RunError(f"tokenizer: cannot load {source!r}{_gguf_part(config) if from_gguf else ''}: {str(e).strip().splitlines()[0]}") from None


def _gguf_part(config: RunConfig) -> str:
    return f" (gguf_file {config.gguf_file!r})" if config.gguf_file else ""


def prepare(config: RunConfig) -> RunParts:
    """Tokenizer, data, model; checked against each other before anything trains."""
    for key, path in (("model", config.model), ("tokenizer", config.tokenizer)):
        if path is not None and not Path(path).expanduser().exists() and looks_local(path):
            raise RunError(f"{key}: no such folder: {path}")
    tokenizer = load_tokenizer(config)
    train_rows = build_dataset(config.data, tokenizer, config.data.train)  # data errors first: nothing loaded yet
    eval_rows = build_dataset(config.data, tokenizer, config.data.eval) if config.data.eval else None
    model = model_to_train(config, torch.float32)
    return causal_lm_parts(config, model, tokenizer, train_rows, eval_rows, fresh=not is_ttt_checkpoint(config.model))


def require_logits_fit(batch: int, row_length: int, vocab: int) -> None:
    """Refuse a step whose logits alone outgrow the device's memory (the process was killed with no
    message): float32 logits of ``batch x row_length x vocab`` and their gradient, against the GPU's
    memory or, on the CPU, the machine's."""
    need = 2 * 4 * batch * row_length * vocab
    if torch.cuda.is_available():
        have, where = torch.cuda.get_device_properties(0).total_memory, "the GPU's"
    else:
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"
    if need > have:
        raise RunError(
            f"train.per_device_train_batch_size {batch} x data.row_length {row_length} x the vocabulary's {vocab} tokens: the logits "
            f"and their gradient alone take {need / 2**30:.1f} GiB a step, more than {where} {have / 2**30:.1f} GiB; use smaller "
            "batches (with train.gradient_accumulation_steps for the same batch) or shorter rows"
        )


def causal_lm_parts(
    config,
    model: nn.Module,
    tokenizer,
    train_rows: PackedRows,
    eval_rows: PackedRows | None,
    fresh: bool,
    also_save: Callable[[Path], None] | None = None,
    **more: Any,
) -> RunParts:
    """What the engine needs to train a transformers causal LM on packed rows, after checking the
    rows against the model: two TTT chunks of context, token ids inside its vocabulary. `fresh`:
    converted by this run (the doctor checks its warm start); `also_save`: writes more into
    `final/`; `more`: further `RunParts` fields."""
    layers = dict(ttt_layers(model))
    if layers:
        require_two_chunks(config.data.row_length, layers)
        chunk = max(layer.chunk_size for layer in layers.values())
        for key, rows in (("data.train", train_rows), ("data.eval", eval_rows)):
            if rows is not None:
                require_ttt_context(rows.document_lengths(), chunk, key, "document", "tokens")
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    require_logits_fit(config.train.per_device_train_batch_size, config.data.row_length, model.get_output_embeddings().weight.shape[0])
    for rows in (train_rows, eval_rows or train_rows):
        top = int(rows.input_ids.max())
        if top >= vocab_rows:
            raise RunError(f"tokenizer mismatch: the data has token id {top} but the model's embedding has {vocab_rows} rows; use the model's own tokenizer")

    def save_final(trained: nn.Module, directory: Path) -> None:
        trained.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        if also_save is not None:
            also_save(directory)

    def first_batch_doctor(module: nn.Module, batch: dict, optimizer):
        inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
        return doctor(
            unwrap(module),
            inputs,
            optimizer=optimizer,
            training=True,
            fresh=fresh,
            ttt_params_max_grad_norm=config.train.ttt_params_max_grad_norm,
            steps=config.train.max_steps if config.train.max_steps > 0 else None,
        )

    parts = dict(
        module=model,
        layers=layers,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        collate=collate,
        save_final=save_final,
        doctor=first_batch_doctor,
        processing_class=tokenizer,
        settings=getattr(model.config, CONFIG_KEY, None),
        train_rows=(train_rows.input_ids, train_rows.position_ids),
    )
    return RunParts(**{**parts, **more})
