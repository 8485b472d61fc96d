"""How a converted transformers model saves: `save_pretrained` as transformers writes it, with the TTT
settings in config.json (``inplace_ttt``), its ``model_type`` marked ``inplace_ttt`` and an
``auto_map`` naming the small module written beside the weights (`REMOTE_CODE`). With this package
imported, `AutoConfig` / `AutoModelForCausalLM` know the mark (`auto`); in a process that never
imported it, ``trust_remote_code=True`` runs that module, which imports the installed package; with
neither, transformers refuses the folder rather than load it without the fast-weight parameters."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import torch.nn as nn

from ...config import TTTConfig
from ...files import write_atomic

CHECKPOINT_MODEL_TYPE = "inplace_ttt"  # what config.json says: transformers alone does not know it
REMOTE_MODULE = "modeling_inplace_ttt"  # the module's name in the folder, as transformers' convention for custom code has it
AUTO_MAP = {"AutoConfig": f"{REMOTE_MODULE}.InPlaceTTTConfig", "AutoModelForCausalLM": f"{REMOTE_MODULE}.InPlaceTTTForCausalLM"}
ARCHITECTURE = "InPlaceTTTForCausalLM"  # config.json's architectures: a class transformers itself does not have
READABLE_SINCE = "0.1.0"  # the oldest inplace-ttt that reads these folders: raise it when the format changes

# No model code: the installed package builds the model. Imports of inplace_ttt sit in a `try`, which
# transformers' own import check skips, so a missing package gets this message rather than its generic one.
REMOTE_CODE = f'''"""In-Place TTT checkpoint: what `trust_remote_code=True` runs to load this folder with transformers.

Written by inplace-ttt beside the weights. It holds no model code: it imports the installed
inplace-ttt package, whose Auto classes build the base architecture and convert it.
"""

from packaging.version import Version

NEEDS = "{READABLE_SINCE}"
_HOW = f"this folder is an In-Place TTT checkpoint: loading it needs the inplace-ttt package, version {{NEEDS}} or newer (pip install 'inplace-ttt>={{NEEDS}}')"

try:
    import inplace_ttt
except ImportError as error:
    raise ImportError(f"{{_HOW}}; it is not installed") from error
_found = getattr(inplace_ttt, "__version__", "0")
if Version(_found) < Version(NEEDS):
    raise ImportError(f"{{_HOW}}; the installed one is {{_found}}")
try:
    from inplace_ttt.families.hf.auto import InPlaceTTTConfig, InPlaceTTTForCausalLM
except ImportError as error:
    raise ImportError(f"{{_HOW}}; the installed {{_found}} has no Auto classes") from error

__all__ = ["InPlaceTTTConfig", "InPlaceTTTForCausalLM"]
'''


def install(model: nn.Module, config: TTTConfig) -> None:
    """Make `model.save_pretrained` write an In-Place TTT folder (the settings as `config` holds them now)."""
    model.save_pretrained = types.MethodType(_save_with(config), model)


def _save_with(config: TTTConfig):
    def save_pretrained(model, save_directory, *args, **kwargs):
        config.write_into(model.config.inplace_ttt)  # the settings as they are now (clip_tau, say)
        type(model).save_pretrained(model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            path = Path(save_directory) / "config.json"
            data = json.loads(path.read_text())
            data["model_type"] = CHECKPOINT_MODEL_TYPE
            data["auto_map"] = dict(AUTO_MAP)
            # tools that pick the class by this name (`transformers serve`, `LlamaForCausalLM`-style
            # lookups in pipelines) find none and fail, rather than build the base without its TTT layers
            data["architectures"] = [ARCHITECTURE]
            write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
            write_remote_code(save_directory)

    return save_pretrained


def write_remote_code(save_directory: str | os.PathLike) -> None:
    """The module config.json's ``auto_map`` names, written into the folder."""
    write_atomic(Path(save_directory) / f"{REMOTE_MODULE}.py", REMOTE_CODE)
