"""Load a converted (or plain) transformers causal LM from a folder: `from_pretrained` for the
folders `save_pretrained` writes and the authors' release (`release`), `load_causal_lm` for any
model folder, hub id or GGUF file, every mistake a user can fix named as a ValueError."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from ...config import CONFIG_KEY, TTTConfig
from ...files import check_safetensors, read_json_object
from ...finite import require_finite
from ...layer import is_ttt_param
from ..record import TRAINING_KEY, split_training
from . import release
from .convert import convert
from .saving import ARCHITECTURE, weights_paths

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # weights torch.save writes: pickles
LOADER_KEYS = frozenset({"dtype", "torch_dtype"})  # config attributes that are also the loader's arguments: the loader's (transformers' own exception)
NOT_WEIGHTS = frozenset({"training_args.bin"})  # what transformers' Trainer saves beside a model, never loaded here


def is_ttt_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory saved by a converted model (its config.json carries the TTT
    settings) or by the authors' release (`adapters.release`)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    data = read_json_object(config_file)
    return CONFIG_KEY in data or release.is_release_config(data)


def checkpoint_settings(path: str | os.PathLike, data: dict | None = None):
    """An In-Place TTT checkpoint's `TTTConfig`, its base model's transformers config, (for a
    release checkpoint) its TTT tensors, and its training record (`adapters.record`; empty for a
    fresh conversion), all checked before any model is built; ValueError naming the file and
    field at fault. `data`: the checkpoint's config.json as already read (by `AutoConfig`, say)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    config_file = path / "config.json"
    if data is None:
        if not config_file.is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a saved model directory")
        data = read_json_object(config_file)
    data = dict(data)
    settings = data.pop(CONFIG_KEY, None)
    if settings is None and release.is_release_config(data):
        return (*release.read_release(path, data), [])
    if settings is None:
        raise ValueError(f"{path} is not an In-Place TTT checkpoint (no '{CONFIG_KEY}' in config.json): load it with transformers and call inplace_ttt.convert")
    settings, training = split_training(settings) if isinstance(settings, dict) else (settings, [])
    base_type = settings.pop("base_model_type", None) if isinstance(settings, dict) else None
    if base_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{config_file}: {CONFIG_KEY}.base_model_type must name the transformers model type the checkpoint was converted "
            f"from (e.g. 'llama', 'qwen3'); got {base_type!r}"
        )
    data["model_type"] = base_type
    data.pop("auto_map", None)  # names our module, not the base architecture's classes
    if data.get("architectures") == [ARCHITECTURE]:
        data.pop("architectures")  # ours; the base config names its own class when saved
    try:
        return TTTConfig.from_dict(settings), CONFIG_MAPPING[base_type].from_dict(data), None, training
    except (ValueError, TypeError) as e:
        raise ValueError(f"{config_file}: {e}") from None


def load_causal_lm(path: str | os.PathLike, *, gguf_file: str | None = None, **kwargs) -> nn.Module:
    """A saved causal LM, In-Place TTT (`from_pretrained`) or plain (transformers'), with what
    a user can fix named as a ValueError: a missing folder, an edited config.json, a weights
    file cut short, weights that do not fit the config, non-finite weights (by name), weights stored
    only as pickles (``.bin``: refused with the command that converts them). A string that is no
    local path is a hub id; only its safetensors weights are read.

    With `gguf_file` (a file inside `path`, or a path of its own) a plain model comes from that
    GGUF checkpoint, dequantized to float weights: a model that saves like any other (tied
    embeddings stay tied)."""
    from transformers import AutoModelForCausalLM, GgufConfig

    local = Path(path).expanduser()
    if local.is_file():
        raise ValueError(f"{path} is a file, not a model folder")
    if not local.exists() and looks_local(str(path)):
        raise ValueError(f"{path}: no such model folder")
    if gguf_file is not None:
        kwargs.update(gguf_file=str(gguf_file), quantization_config=GgufConfig(dequantize=True))
    elif local.is_dir():
        if not (local / "config.json").is_file():
            raise ValueError(f"{path} has no config.json: not a saved model folder")
        safetensors = sorted(local.glob("*.safetensors"))
        pickles = sorted(f.name for suffix in PICKLE_SUFFIXES for f in local.glob(f"*{suffix}") if f.name not in NOT_WEIGHTS)
        if not safetensors and pickles:
            raise ValueError(
                f"{path} holds its weights only as pickles ({', '.join(pickles)}), which are never loaded: convert them to safetensors once, "
                f'in an environment you trust, with: python -c "from transformers import AutoModelForCausalLM as M; '
                f"M.from_pretrained('{path}', use_safetensors=False).save_pretrained('{path}')\""
            )
        for file in safetensors:
            check_safetensors(file)
    try:
        if is_ttt_checkpoint(local):
            return from_pretrained(local, **kwargs)
        safetensors_only = {} if gguf_file is not None else {"use_safetensors": True}  # transformers would unpickle a .bin (restricted, but a pickle)
        model = AutoModelForCausalLM.from_pretrained(path, **{**safetensors_only, **kwargs})
    except OSError as e:  # transformers' "not a local folder and not a model on the hub", a missing weights file
        raise ValueError(f"{path}: cannot load ({str(e).strip().splitlines()[0]})") from None
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e) and "size mismatch" not in str(e):  # an out-of-memory, say: not ours to relabel
            raise
        raise ValueError(f"{path}: the weights do not fit its config.json (sizes differ; transformers' load report above lists them)") from None
    require_finite(model.state_dict().items(), path)
    return model


def looks_local(path: str) -> bool:
    """A path rather than a hub id (``name`` or ``namespace/name``)."""
    first = path.split("/")[0]
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or (first != path and Path(first).is_dir())


@contextlib.contextmanager
def quiet_transformers():
    """transformers' warnings off for a block: loading an In-Place TTT directory makes it warn, by
    design (weights the base class does not know, which the loader reads itself)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def from_pretrained(path: str | os.PathLike, *, clip_tau: float | None = ..., config=None, **kwargs) -> nn.Module:
    """Load a converted model saved with `model.save_pretrained`, or a checkpoint of the authors'
    release (`adapters.release`), safetensors only: the base architecture's own class, converted.

    `clip_tau` overrides the saved inference clipping; `config`, the folder's config as
    `AutoConfig` read it (changes made to it included), stands in for its config.json; other
    keyword arguments go to `AutoModelForCausalLM.from_pretrained` (dtype, device_map,
    attn_implementation, ...).
    """
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder (In-Place TTT checkpoints load from a local directory: download a hub repository first)")
    if config is not None:
        attn = getattr(config, "_attn_implementation", None)  # AutoConfig takes it out of the caller's arguments
        if attn is not None:
            kwargs.setdefault("attn_implementation", attn)
    # `config`'s fields over the file's: the generic config class AutoConfig reads the folder with drops some (use_cache)
    data = None if config is None else {**read_json_object(path / "config.json"), **config.to_dict()}
    ttt_config, config, found, training = checkpoint_settings(path, data)  # checked before anything loads
    if kwargs.pop("use_safetensors", None) is False:
        raise ValueError(f"{path}: use_safetensors=False, but In-Place TTT checkpoints load from safetensors only")
    # the model's settings given to the loader (use_cache, output_hidden_states) go to its config, as transformers applies them
    for key in [k for k in kwargs if hasattr(config, k) and k not in LOADER_KEYS]:
        setattr(config, key, kwargs.pop(key))
    loading_info = kwargs.pop("output_loading_info", False)
    files = weight_files(path, kwargs.get("variant"))
    for file in files:
        check_safetensors(file)
    with quiet_transformers():  # the base class does not know the TTT weights; we load them below
        model, info = AutoModelForCausalLM.from_pretrained(path, config=config, use_safetensors=True, output_loading_info=True, **kwargs)
    if info["missing_keys"]:  # its warning is silenced with the expected ones (the TTT weights, unknown to the base class)
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{path} lacks base weights {missing[:4]}{' ...' if len(missing) > 4 else ''}: the folder is incomplete")
    if clip_tau is not ...:
        ttt_config = ttt_config.replace(clip_tau=clip_tau)
    convert(model, ttt_config)
    if training:
        model.config.inplace_ttt[TRAINING_KEY] = training
    wanted = {name for name, _ in model.named_parameters() if is_ttt_param(name)}
    if found is None:
        found = {}
        for file in files:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    if key in wanted:
                        found[key] = f.get_tensor(key)
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{path} lacks trained TTT weights {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    params = dict(model.named_parameters())
    wrong = [f"{k} {list(t.shape)} (config.json makes it {list(params[k].shape)})" for k, t in found.items() if t.shape != params[k].shape]
    if wrong:
        raise ValueError(f"{path}: TTT weights do not fit its config.json: {', '.join(wrong[:3])}")
    with torch.no_grad():
        for key, tensor in found.items():
            params[key].copy_(tensor)
    require_finite(model.state_dict().items(), path)
    if loading_info:
        info["unexpected_keys"] = {k for k in info["unexpected_keys"] if k not in found}  # the TTT weights were read
        return model, info
    return model


def weight_files(path: Path, variant: str | None = None) -> list[Path]:
    """The safetensors files transformers reads from the folder, and so the ones the TTT weights
    come from: ``model.safetensors``, else the shards its index names (`variant` in their names as
    transformers puts it). Never every ``*.safetensors``: a file left from an earlier save would
    mix old TTT weights with new base weights."""
    single, index = weights_paths(path, variant)
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        return [path / name for name in sorted(set(weight_map.values()))]
    raise FileNotFoundError(f"{path} has no {single.name} nor {index.name} (In-Place TTT checkpoints are safetensors only)")
