"""transformers' Auto classes for In-Place TTT folders: `AutoConfig` and `AutoModelForCausalLM`
read a folder a converted model saved (``model_type: inplace_ttt``) once this package is imported
(`register`, at import), or, in a process that never imported it, with ``trust_remote_code=True``
through the small module `saving` writes beside the weights, which imports the installed package.

Loading does not return an instance of a class of ours: `InPlaceTTTForCausalLM` builds the base
architecture's own class (``LlamaForCausalLM``, ``Qwen3ForCausalLM``, ...) from the recorded
settings, converts it and loads its TTT weights (`loading.from_pretrained`), so the model is the
one every tool already knows (PEFT's target modules, generation, pipelines), with its TTT layers.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig

from .convert import convert
from .loading import checkpoint_settings, from_pretrained
from .saving import AUTO_MAP, CHECKPOINT_MODEL_TYPE, write_remote_code


class InPlaceTTTConfig(PreTrainedConfig):
    """An In-Place TTT folder's config.json as `AutoConfig` reads it: the base model's fields, flat,
    with the TTT settings under ``inplace_ttt`` (their ``base_model_type`` names the architecture);
    `loading.checkpoint_settings` checks and splits them."""

    model_type = CHECKPOINT_MODEL_TYPE

    def to_dict(self) -> dict:
        return {**super().to_dict(), "auto_map": dict(AUTO_MAP)}

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Kept off: transformers would copy this module's file into saved folders; `saving` writes the folder's own module."""


class InPlaceTTTForCausalLM:
    """What `AutoModelForCausalLM` maps `InPlaceTTTConfig` to. Never instantiated: its loaders return
    the base architecture's class, converted (see the module's docstring)."""

    config_class = InPlaceTTTConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`loading.from_pretrained` of the folder (a local directory): `config` (what `AutoConfig`
        read, with what the caller changed), `dtype`, `device_map`, `attn_implementation`,
        `clip_tau` and the rest as there."""
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments; got {len(model_args)}")
        return from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_config(cls, config: InPlaceTTTConfig, **kwargs):
        """A new model of the base architecture, converted (TTT parameters at their warm start), as `AutoModelForCausalLM.from_config` makes one."""
        ttt_config, base, _, _ = checkpoint_settings(config.name_or_path, config.to_dict())
        return convert(AutoModelForCausalLM.from_config(base, **kwargs), ttt_config)

    _from_config = from_config  # the name transformers' Auto class calls

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModelForCausalLM"):
        """Kept off, as `InPlaceTTTConfig.register_for_auto_class`."""


def register() -> None:
    """Map ``model_type: inplace_ttt`` to the classes above in transformers' Auto classes (idempotent)."""
    AutoConfig.register(CHECKPOINT_MODEL_TYPE, InPlaceTTTConfig, exist_ok=True)
    AutoModelForCausalLM.register(InPlaceTTTConfig, InPlaceTTTForCausalLM, exist_ok=True)
