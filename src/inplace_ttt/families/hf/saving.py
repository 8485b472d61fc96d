"""How a converted transformers model saves: `save_pretrained` as transformers writes it, with the TTT
settings in config.json (``inplace_ttt``) and its ``model_type`` marked ``inplace_ttt``, so that plain
transformers refuses the folder rather than load it without the fast-weight parameters; `AutoConfig`
(which `AutoTokenizer` reads first) knows the mark and reads such a config.json."""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch.nn as nn

from ...config import TTTConfig
from ...files import write_atomic

CHECKPOINT_MODEL_TYPE = "inplace_ttt"  # what config.json says, so plain transformers refuses to load it


def install(model: nn.Module, config: TTTConfig) -> None:
    """Make `model.save_pretrained` write an In-Place TTT folder (the settings as `config` holds them now)."""
    register_checkpoint_type()
    model.save_pretrained = types.MethodType(_save_with(config), model)


def _save_with(config: TTTConfig):
    def save_pretrained(model, save_directory, *args, **kwargs):
        config.write_into(model.config.inplace_ttt)  # the settings as they are now (clip_tau, say)
        type(model).save_pretrained(model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            path = Path(save_directory) / "config.json"
            data = json.loads(path.read_text())
            data["model_type"] = CHECKPOINT_MODEL_TYPE
            write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    return save_pretrained


def register_checkpoint_type() -> None:
    """Let `AutoConfig` read a saved In-Place TTT directory's config.json: `AutoTokenizer` reads it
    before the tokenizer's own files and otherwise warns about the unknown model type. No model
    class goes with it, so `AutoModelForCausalLM` still refuses the directory."""
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if CHECKPOINT_MODEL_TYPE not in CONFIG_MAPPING:
        config_class = type("InPlaceTTTCheckpointConfig", (PretrainedConfig,), {"model_type": CHECKPOINT_MODEL_TYPE, "__module__": __name__})
        AutoConfig.register(CHECKPOINT_MODEL_TYPE, config_class)
