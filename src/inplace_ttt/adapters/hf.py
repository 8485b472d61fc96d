"""Hugging Face transformers: convert a loaded causal LM in place, stream with its cache, save, load.

We patch a loaded model instead of forking model files: each chosen decoder layer's `.mlp`
becomes an `InPlaceTTTMLP` (same parameters, same names), and three hooks feed it what the
decoder layer does not pass to an MLP:

- a forward pre-hook on the base model turns `attention_mask` / `position_ids` / the cache length
  into TTT positions (documents restart at 0, padding is -1) and adopts the cache, so fast-weight
  states travel inside `cache` / `past_key_values` like keys and values do;
- a forward hook on the input embeddings keeps the token embeddings (for
  ``target_source="token_embeddings"``);
- a forward pre-hook on each TTT MLP passes positions, target source and state to it.

The context lives until the next forward, so gradient checkpointing's recomputation (during
backward) sees the same positions: run backward before the next forward, as training loops do.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import types
import weakref
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from ..config import CONFIG_KEY, TTTConfig
from ..files import check_safetensors, write_atomic
from ..layer import GatedMLPSpec, InPlaceTTTMLP, is_ttt_param
from . import release
from .hf_cache import FastWeightCacheMixin, adopt_cache
from .probe import ModelProbe
from .record import TRAINING_KEY, split_training

CHECKPOINT_MODEL_TYPE = "inplace_ttt"  # what config.json says, so plain transformers refuses to load it


class _ForwardContext:
    """What the TTT layers of one model need about the forward pass in flight."""

    def __init__(self) -> None:
        self.positions: Tensor | None = None
        self.embeddings: Tensor | None = None
        self._cache = None
        self.cp_group = None  # set by `set_context_parallel`

    @property
    def cache(self) -> FastWeightCacheMixin | None:
        return self._cache() if self._cache is not None else None

    @cache.setter
    def cache(self, cache) -> None:
        self._cache = weakref.ref(cache) if cache is not None else None


def decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The module that owns the decoder layers, and the layers (found by structure)."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and all(hasattr(layer, "mlp") for layer in layers):
            return module, layers
    raise ValueError(f"{type(model).__name__} is not a decoder this adapter can read: no `layers` ModuleList whose layers have an `.mlp`")


def ttt_layers(model: nn.Module) -> Iterator[tuple[int, InPlaceTTTMLP]]:
    """`(layer index, TTT MLP)` for every TTT layer of a converted model."""
    for idx, layer in enumerate(decoder_layers(model)[1]):
        if isinstance(layer.mlp, InPlaceTTTMLP):
            yield idx, layer.mlp


def owns(model: nn.Module) -> bool:
    """A transformers model (anything that is not another family's: the adapter of last resort)."""
    return True


def settings(model: nn.Module) -> dict:
    """The TTT settings in ``model.config.inplace_ttt`` (saved in config.json)."""
    found = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    return found


def is_converted(model: nn.Module) -> bool:
    return any(isinstance(m, InPlaceTTTMLP) for m in model.modules()) or hasattr(getattr(model, "config", None), CONFIG_KEY)


def convert(model: nn.Module, config: TTTConfig, *, cp_group=None) -> nn.Module:
    """Turn the chosen MLPs of a transformers causal LM into In-Place TTT MLPs, in place.

    Exact warm start: the converted model computes what the original did until the new
    parameters train. The settings go into ``model.config.inplace_ttt`` and travel with
    `save_pretrained`. Raises, before changing anything, for a model without gated MLPs,
    a layer index outside the model, or a model converted already. `cp_group`: see
    `set_context_parallel`.
    """
    if is_converted(model):
        raise ValueError(f"{type(model).__name__} is already an In-Place TTT model; convert the original model instead")
    base, layers = decoder_layers(model)
    indices = config.layer_indices(len(layers))
    spec = GatedMLPSpec()
    for i in indices:
        missing = spec.missing(layers[i].mlp)
        if missing:
            raise ValueError(
                f"{type(model).__name__}: the MLP of layer {i} ({type(layers[i].mlp).__name__}) is not a gated MLP "
                f"(missing {missing}); In-Place TTT needs gate_proj, up_proj, down_proj and act_fn"
            )
    _check_float_weights(model)
    _drop_gguf_quantizer(model)
    _register_checkpoint_type()
    for i in indices:
        layers[i].mlp = InPlaceTTTMLP(layers[i].mlp, config, spec, layer_idx=i)
    model.config.inplace_ttt = {**config.to_dict(), "layers": list(indices), "base_model_type": model.config.model_type}
    _install(model, base)
    set_context_parallel(model, cp_group)
    return model


def _register_checkpoint_type() -> None:
    """Let `AutoConfig` read a saved In-Place TTT directory's config.json: `AutoTokenizer` reads it
    before the tokenizer's own files and otherwise warns about the unknown model type. No model
    class goes with it, so `AutoModelForCausalLM` still refuses the directory."""
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if CHECKPOINT_MODEL_TYPE not in CONFIG_MAPPING:
        config_class = type("InPlaceTTTCheckpointConfig", (PretrainedConfig,), {"model_type": CHECKPOINT_MODEL_TYPE, "__module__": __name__})
        AutoConfig.register(CHECKPOINT_MODEL_TYPE, config_class)


def _check_float_weights(model: nn.Module) -> None:
    """The fast weights add to the down projections in float: refuse packed (quantized) weights."""
    packed = sorted({type(m).__name__ for m in model.modules() for p in m.parameters(recurse=False) if not p.is_floating_point()})
    if packed:
        raise ValueError(
            f"{type(model).__name__} holds quantized weights ({', '.join(packed)}); In-Place TTT needs float weights: load the "
            "model unquantized (a GGUF file with quantization_config=GgufConfig(dequantize=True), or inplace_ttt.adapters.hf.load_causal_lm)"
        )


def _drop_gguf_quantizer(model: nn.Module) -> None:
    """A model transformers read from a GGUF file holds float weights (dequantized at load) but keeps
    the GGUF quantizer, which makes `save_pretrained` refuse it: remove it (transformers' own
    `remove_quantization_config`, what loading with ``GgufConfig(dequantize=True)`` does)."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is not None and str(getattr(method, "value", method)) == "gguf":
        quantizer.remove_quantization_config(model)
        model.config._is_quantized = False


def set_context_parallel(model: nn.Module, group) -> None:
    """Split sequences along time across the ranks of `group` (a `torch.distributed` process
    group; None: off). Each rank then passes its contiguous slice of the rows (``input_ids``,
    ``labels``) with ``position_ids`` the global positions of its tokens, and no cache; the TTT
    layers exchange their carries over `group`. Attention needs its own context parallelism
    with the same contiguous split (PyTorch's ``context_parallel`` without load balancing)."""
    if not hasattr(model, "_ttt_context"):
        raise ValueError(f"{type(model).__name__} has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    for _, layer in ttt_layers(model):
        layer.cp_group = group
    model._ttt_context.cp_group = group


# hooks ---------------------------------------------------------------------------------------


def _install(model: nn.Module, base: nn.Module) -> None:
    ctx = _ForwardContext()
    model._ttt_context = ctx
    signature = inspect.signature(base.forward)
    base.register_forward_pre_hook(partial(_before_forward, model.config, signature, ctx), with_kwargs=True)
    if any(layer.target_source == "token_embeddings" for _, layer in ttt_layers(model)):
        base.get_input_embeddings().register_forward_hook(partial(_keep_embeddings, ctx))
    for _, layer in ttt_layers(model):
        layer.register_forward_pre_hook(partial(_feed_layer, ctx), with_kwargs=True)
    model.save_pretrained = types.MethodType(_save_pretrained, model)


def _keep_embeddings(ctx: _ForwardContext, module, args, output) -> None:
    ctx.embeddings = output


def _before_forward(config, signature: inspect.Signature, ctx: _ForwardContext, module, args, kwargs):
    params = signature.parameters
    bound = dict(signature.bind_partial(*args, **kwargs).arguments)
    for name, p in params.items():  # arguments a decorator renames arrive in **kwargs
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    cache_key = "cache" if "cache" in params else "past_key_values"
    cache = bound.get("cache", bound.get("past_key_values"))
    inputs = bound.get("input_ids") if bound.get("input_ids") is not None else bound.get("inputs_embeds")
    batch, length = inputs.shape[:2]
    use_cache = bound.get("use_cache")
    if use_cache is None:
        use_cache = getattr(config, "use_cache", False)
    if ctx.cp_group is not None:
        _check_context_parallel(cache, bound.get("position_ids"))
    elif cache is None and use_cache:
        from transformers import DynamicCache

        cache = kwargs[cache_key] = DynamicCache(config=config)
    if cache is not None:
        if not isinstance(cache, FastWeightCacheMixin) and cache.get_seq_length() > 0:
            raise ValueError(
                f"this cache already holds {cache.get_seq_length()} tokens that no fast-weight state saw; "
                "start generation with an empty cache (or none) so the TTT layers can follow it"
            )
        adopt_cache(cache)
    past = cache.get_seq_length() if cache is not None else 0
    ctx.positions = ttt_positions(batch, length, bound.get("attention_mask"), bound.get("position_ids"), past, inputs.device)
    ctx.embeddings = bound.get("inputs_embeds")
    ctx.cache = cache
    return args, kwargs


def _check_context_parallel(cache, position_ids) -> None:
    """A split sequence needs its global positions (a slice cannot count them) and no cache."""
    if cache is not None:
        raise ValueError("a context-parallel forward (sequences split across ranks) does not stream: pass no cache (use_cache=False)")
    if position_ids is None:
        raise ValueError("with context parallelism pass position_ids: the global positions of this rank's tokens (rotary attention needs them too)")


def ttt_positions(batch: int, length: int, attention_mask, position_ids, past: int, device) -> Tensor:
    """TTT positions `[B, T]` of the new tokens: the model's positions (or the count of earlier
    non-padding tokens, as `generate` computes them), with padding (`attention_mask == 0`) at -1."""
    mask = attention_mask if isinstance(attention_mask, Tensor) and attention_mask.dim() == 2 else None
    if position_ids is not None:
        pos = position_ids[0] if position_ids.dim() == 3 else position_ids  # [3, B, T] multimodal RoPE
        pos = pos.to(device=device, dtype=torch.long).expand(batch, length)
    elif mask is not None:
        pos = (mask.long().cumsum(-1) - 1)[:, -length:]
    else:
        pos = torch.arange(past, past + length, device=device).expand(batch, length)
    if mask is not None:
        pos = torch.where(mask[:, -length:].to(device=device, dtype=torch.bool), pos, -1)
    return pos


def _feed_layer(ctx: _ForwardContext, layer: InPlaceTTTMLP, args, kwargs):
    if {"position_ids", "target_source", "state"} & kwargs.keys():  # called by hand with its own arguments
        return None
    x = args[0] if args else next(iter(kwargs.values()))
    if ctx.positions is None or tuple(ctx.positions.shape) != tuple(x.shape[:2]):
        raise RuntimeError(
            f"TTT layer {layer.layer_idx} got input {list(x.shape)} but the model forward described "
            f"{None if ctx.positions is None else list(ctx.positions.shape)} tokens; call the model, not the layer"
        )
    cache = ctx.cache
    kwargs = {
        **kwargs,
        "position_ids": ctx.positions,
        "target_source": ctx.embeddings if layer.target_source == "token_embeddings" else None,
        "state": cache.ttt_state(layer.layer_idx) if cache is not None else None,
    }
    return args, kwargs


# save / load ----------------------------------------------------------------------------------


def _save_pretrained(model, save_directory, *args, **kwargs):
    """`save_pretrained`, then mark config.json so that plain transformers refuses to load it."""
    type(model).save_pretrained(model, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        path = Path(save_directory) / "config.json"
        data = json.loads(path.read_text())
        data["model_type"] = CHECKPOINT_MODEL_TYPE
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def is_ttt_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory saved by a converted model (its config.json carries the TTT
    settings) or by the authors' release (`adapters.release`)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    data = _read_config_json(config_file)
    return CONFIG_KEY in data or release.is_release_config(data)


def _read_config_json(config_file: Path) -> dict:
    try:
        data = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{config_file} must hold a JSON object")
    return data


def checkpoint_settings(path: str | os.PathLike):
    """An In-Place TTT checkpoint's `TTTConfig`, its base model's transformers config, (for a
    release checkpoint) its TTT tensors, and its training record (`adapters.record`; empty for a
    fresh conversion), all checked before any model is built; ValueError naming the file and
    field at fault."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a saved model directory")
    data = _read_config_json(config_file)
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
    try:
        return TTTConfig.from_dict(settings), CONFIG_MAPPING[base_type].from_dict(data), None, training
    except (ValueError, TypeError) as e:
        raise ValueError(f"{config_file}: {e}") from None


def load_causal_lm(path: str | os.PathLike, *, gguf_file: str | None = None, **kwargs) -> nn.Module:
    """A saved causal LM, In-Place TTT (`from_pretrained`) or plain (transformers'), with what
    a user can fix named as a ValueError: a missing folder, an edited config.json, a weights
    file cut short, weights that do not fit the config. A string that is no local path is a hub id.

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
        for file in sorted(local.glob("*.safetensors")):
            check_safetensors(file)
    try:
        if is_ttt_checkpoint(local):
            return from_pretrained(local, **kwargs)
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:  # transformers' "not a local folder and not a model on the hub", a missing weights file
        raise ValueError(f"{path}: cannot load ({str(e).strip().splitlines()[0]})") from None
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e) and "size mismatch" not in str(e):  # an out-of-memory, say: not ours to relabel
            raise
        raise ValueError(f"{path}: the weights do not fit its config.json (sizes differ; transformers' load report above lists them)") from None


def looks_local(path: str) -> bool:
    """A path rather than a hub id (``name`` or ``namespace/name``)."""
    first = path.split("/")[0]
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or (first != path and Path(first).is_dir())


@contextlib.contextmanager
def quiet_transformers():
    """transformers' warnings off for a block: loading an In-Place TTT directory makes it warn, by
    design (unknown model_type, weights the base class does not know)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def from_pretrained(path: str | os.PathLike, *, clip_tau: float | None = ..., **kwargs) -> nn.Module:
    """Load a converted model saved with `model.save_pretrained`, or a checkpoint of the authors'
    release (`adapters.release`), safetensors only.

    `clip_tau` overrides the saved inference clipping; other keyword arguments go to
    `AutoModelForCausalLM.from_pretrained` (dtype, device_map, ...).
    """
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path = Path(path)
    ttt_config, config, found, training = checkpoint_settings(path)  # checked before anything loads
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no .safetensors weights (In-Place TTT checkpoints are safetensors only)")
    for file in files:
        check_safetensors(file)
    with quiet_transformers():  # the base class does not know the TTT weights; we load them below
        model = AutoModelForCausalLM.from_pretrained(path, config=config, use_safetensors=True, **kwargs)
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
    return model


# the doctor's view of a transformers model ------------------------------------------------------


def _positions(batch: dict) -> Tensor:
    ids = batch["input_ids"]
    return ttt_positions(ids.shape[0], ids.shape[1], batch.get("attention_mask"), batch.get("position_ids"), 0, ids.device)


def _logits(model: nn.Module, batch: dict) -> Tensor:
    with torch.no_grad():
        return model(**batch, use_cache=False).logits.float()


def _loss(model: nn.Module, batch: dict) -> Tensor:
    """The next-token loss of the batch's tokens; padding (`attention_mask` 0 or position -1) is no target."""
    labels = batch["input_ids"].masked_fill(_positions(batch) < 0, -100)
    return model(**batch, labels=labels, use_cache=False).loss


def _causality_gap(model: nn.Module, batch: dict) -> float:
    """How far changing the last token moves the logits of the earlier positions."""
    ids = batch["input_ids"]
    t = ids.shape[1] - 1
    if t == 0:
        return 0.0
    changed = dict(batch, input_ids=ids.clone())
    changed["input_ids"][:, t] = (ids[:, t] + 1) % max(int(ids.max()) + 1, 2)
    return (_logits(model, changed)[:, :t] - _logits(model, batch)[:, :t]).abs().max().item()


PROBE = ModelProbe(
    positions=_positions,
    logits=_logits,
    loss=_loss,
    causality_gap=_causality_gap,
    original_mlp=lambda base, idx: decoder_layers(base)[1][idx].mlp,
    settings=lambda model: model.config.inplace_ttt,
)


def save(model: nn.Module, directory: str | os.PathLike) -> Path:
    """`model.save_pretrained(directory)` (safetensors; config.json says model_type "inplace_ttt")."""
    model.save_pretrained(directory)
    return Path(directory)


def load(directory: str | os.PathLike, **options) -> nn.Module:
    """`from_pretrained(directory, **options)`."""
    return from_pretrained(directory, **options)
