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
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from . import release
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


def release_or_base(base_class: type) -> type:
    """What `AutoModelForCausalLM` maps the config class of a family the authors' release covers to:
    a folder in their format (their ``ttt_*`` keys under their ``model_type``, ``qwen3`` or
    ``llama``: nothing else tells it apart) loads converted; any other goes to `base_class` exactly
    as transformers would send it. Hand-written because transformers chooses a model class by the
    config's class alone, and the release shares transformers' config classes."""

    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        data = config.to_dict() if config is not None else {}
        if release.is_release_config(data) and data.get("ttt_mode") is not False:  # false: their model, too, runs it without TTT
            return InPlaceTTTForCausalLM.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        remote = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")
        if remote and kwargs.get("trust_remote_code"):  # what transformers does for a folder with its own code, which this class's registration hides from it
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            hub = {k: kwargs[k] for k in ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token") if k in kwargs}
            return get_class_from_dynamic_module(remote, pretrained_model_name_or_path, **hub).from_pretrained(
                pretrained_model_name_or_path, *model_args, config=config, **kwargs
            )
        return base_class.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    def from_config(cls, config, **kwargs):
        return base_class._from_config(config, **kwargs)

    return type(
        f"ReleaseOr{base_class.__name__}",
        (),
        {
            "__doc__": release_or_base.__doc__,
            "__module__": __name__,
            "config_class": base_class.config_class,
            "from_pretrained": classmethod(from_pretrained),
            "_from_config": classmethod(from_config),
            "register_for_auto_class": classmethod(lambda cls, auto_class=None: None),
        },
    )


def register() -> None:
    """Map ``model_type: inplace_ttt`` to the classes above in transformers' Auto classes, and the
    release's families to `release_or_base` (idempotent)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    AutoConfig.register(CHECKPOINT_MODEL_TYPE, InPlaceTTTConfig, exist_ok=True)
    AutoModelForCausalLM.register(InPlaceTTTConfig, InPlaceTTTForCausalLM, exist_ok=True)
    for model_type in release.FAMILIES:
        config_class = CONFIG_MAPPING[model_type]
        base_class = MODEL_FOR_CAUSAL_LM_MAPPING[config_class]
        if base_class.__module__ != __name__:  # not registered yet
            AutoModelForCausalLM.register(config_class, release_or_base(base_class), exist_ok=True)
