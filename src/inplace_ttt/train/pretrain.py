"""`ittt pretrain`: `ittt train` of the from-scratch family (`train.scratch`), whose YAML needs no
``model_type``. The names here are the ones `ittt pretrain` had as an engine of its own."""

from __future__ import annotations

from pathlib import Path

from .run import train
from .scratch import SUMMARY, ArchitectureConfig, ScratchRunConfig, TokenizerSettings, build_model, train_tokenizer

PretrainConfig = ScratchRunConfig

__all__ = ["SUMMARY", "ArchitectureConfig", "PretrainConfig", "TokenizerSettings", "build_model", "pretrain", "train_tokenizer"]


def pretrain(config: ScratchRunConfig, resume: bool = False, allow_changes: bool = False) -> Path:
    """Train the tokenizer (unless given) and the model; returns the final model's directory,
    which also holds the tokenizer and `pretrain_summary.json` (tokens seen, time, losses)."""
    return train(config, resume, allow_changes)
