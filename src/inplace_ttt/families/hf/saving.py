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

from ...files import write_atomic
from ...layer import InPlaceTTTMLP

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


def install(model: nn.Module) -> None:
    """Make `model.save_pretrained` write an In-Place TTT folder, with the settings its TTT layers hold
    at the time of saving (`set_clip_tau`'s, say; a deep copy's own)."""
    model.save_pretrained = types.MethodType(save_pretrained, model)


def save_pretrained(model, save_directory, is_main_process: bool = True, *args, **kwargs):
    """transformers' `save_pretrained`, then config.json marked (`CHECKPOINT_MODEL_TYPE`, `AUTO_MAP`,
    `ARCHITECTURE`) and the remote-code module written beside it."""
    if kwargs.get("push_to_hub"):  # transformers would upload before the folder is marked: a plain model, without its TTT layers
        raise ValueError(
            "save_pretrained(..., push_to_hub=True) is not supported for an In-Place TTT model: "
            "save it, then call model.push_to_hub(repo_id), which uploads the marked folder"
        )
    ttt_config = next(layer.config for layer in model.modules() if isinstance(layer, InPlaceTTTMLP))
    ttt_config.write_into(model.config.inplace_ttt)  # the settings as they are now (clip_tau, say)
    single, index = weights_paths(Path(save_directory), kwargs.get("variant"))
    before = _stat(single), _stat(index)
    type(model).save_pretrained(model, save_directory, is_main_process, *args, **kwargs)
    if is_main_process:
        wrote_shards = _stat(index) not in (None, before[1])
        kept_single = before[0] is not None and _stat(single) == before[0]
        if wrote_shards and kept_single:  # an earlier save's single file, which transformers leaves and reads first: the folder would load as the old model
            single.unlink()
        path = Path(save_directory) / "config.json"
        data = json.loads(path.read_text())
        data["model_type"] = CHECKPOINT_MODEL_TYPE
        data["auto_map"] = dict(AUTO_MAP)
        # tools that pick the class by this name (`transformers serve`, `LlamaForCausalLM`-style
        # lookups in pipelines) find none and fail, rather than build the base without its TTT layers
        data["architectures"] = [ARCHITECTURE]
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        write_remote_code(save_directory)


def weights_paths(folder: Path, variant: str | None = None) -> tuple[Path, Path]:
    """The single weights file and the shard index of a folder, with `variant` in their names where
    transformers puts it (``model.fp16.safetensors``, ``model.safetensors.index.fp16.json``)."""
    infix = f".{variant}" if variant else ""
    return folder / f"model{infix}.safetensors", folder / f"model.safetensors.index{infix}.json"


def _stat(path: Path) -> tuple[int, int, int] | None:
    """What tells whether a save rewrote `path`: its inode, modification time and size (None: no such file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def write_remote_code(save_directory: str | os.PathLike) -> None:
    """The module config.json's ``auto_map`` names, written into the folder."""
    write_atomic(Path(save_directory) / f"{REMOTE_MODULE}.py", REMOTE_CODE)
