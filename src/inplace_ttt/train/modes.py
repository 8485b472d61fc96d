"""Training modes, the same for every model family: which parameters train, and how.

- `full`: every parameter;
- `ttt_only`: the TTT parameters and the TTT layers' down projections (the fast weights' `W0`);
- `lora`: PEFT LoRA on `lora.target_modules` (``[all-linear]``: every linear layer), the TTT parameters trained in full and never
  wrapped (a LoRA of a zero-initialised convolution would start the warm start's gradient at zero).
"""

from __future__ import annotations

import torch.nn as nn

from ..layer import InPlaceTTTMLP, is_ttt_param
from .config import MODES, LoraSettings

ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer of the model (moshi-finetune's LoRA, moshi's replace_all_linear_with_lora)


class ModeError(ValueError):
    """A mode cannot be applied to this model."""


def apply_mode(module: nn.Module, mode: str, lora: LoraSettings, layers: dict[int, InPlaceTTTMLP]) -> nn.Module:
    """Freeze or wrap the parameters of `module` (what the engine trains) for `mode`; returns the
    module to train (a `peft.PeftModel` around `module` in `lora` mode)."""
    if mode not in MODES:
        raise ModeError(f"train.mode must be one of {MODES}; got {mode!r}")
    if mode == "ttt_only":
        if not layers:
            raise ModeError("train.mode=ttt_only but the model has no TTT layers")
        trainable = {id(p) for layer in layers.values() for p in (*layer.ttt.parameters(), layer.down.weight)}
        for p in module.parameters():
            p.requires_grad_(id(p) in trainable)
        return module
    if mode == "lora":
        from peft import LoraConfig, get_peft_model
        from transformers import PreTrainedModel

        targets = ALL_LINEAR if lora.target_modules == [ALL_LINEAR] else lora.target_modules  # PEFT reads its shorthand as a string only
        # a causal LM's adapters say so: without a task type PEFT records the base class (LlamaForCausalLM, ...), and
        # AutoPeftModelForCausalLM would load the converted folder with it, without its TTT layers
        task = "CAUSAL_LM" if isinstance(module, PreTrainedModel) else None
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type=task)
        try:
            module = get_peft_model(module, config)
        except ValueError as e:  # PEFT names the target modules it could not find
            raise ModeError(f"lora.target_modules: {e}") from None
        for name, p in module.named_parameters():
            if is_ttt_param(name):
                p.requires_grad_(True)
        return module
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def is_peft(module: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(module, PeftModel)


def unwrap(module: nn.Module) -> nn.Module:
    """The module PEFT wraps in `lora` mode (the module itself otherwise)."""
    return module.base_model.model if is_peft(module) else module


def merged(module: nn.Module) -> nn.Module:
    """The trained module with any LoRA folded into its base weights, under the original names."""
    return module.merge_and_unload() if is_peft(module) else module
