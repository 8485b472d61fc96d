"""Convert a loaded transformers causal LM in place: each chosen decoder layer's ``.mlp`` becomes
an `InPlaceTTTMLP` (same parameters, same names), the model's forwards hand those layers their
`TTTContext` (`context.install`), and its saved folder carries the TTT settings (`saving`).

We patch a loaded model instead of forking model files, so every architecture whose decoder
layers hold a gated ``mlp`` (Llama, Qwen2, Qwen3, Mistral, ...) converts the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch.nn as nn

from ...config import CONFIG_KEY, TTTConfig
from ...layer import GatedMLPSpec, InPlaceTTTMLP
from . import context, saving


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


def is_converted(model: nn.Module) -> bool:
    return any(isinstance(m, InPlaceTTTMLP) for m in model.modules()) or hasattr(getattr(model, "config", None), CONFIG_KEY)


def convert(model: nn.Module, config: TTTConfig, *, cp_group=None) -> nn.Module:
    """Turn the chosen MLPs of a transformers causal LM into In-Place TTT MLPs, in place.

    Exact warm start: the converted model computes what the original did until the new
    parameters train. The layers share one copy of `config` (the model's settings: a change to
    it, as `set_clip_tau` makes, reaches every layer); ``model.config.inplace_ttt`` records it
    for `save_pretrained`. Raises, before changing anything, for a model without gated MLPs, a
    layer index outside the model, quantized weights, or a model converted already.
    `cp_group`: see `set_context_parallel`.
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
    config = config.replace()  # this model's own copy
    for i in indices:
        layers[i].mlp = InPlaceTTTMLP(layers[i].mlp, config, spec, layer_idx=i)
    model.config.inplace_ttt = {**config.to_dict(), "layers": list(indices), "base_model_type": model.config.model_type}
    context.install(base, model.config, dict(enumerate(layers)))
    saving.install(model)
    set_context_parallel(model, cp_group)
    return model


def settings(model: nn.Module) -> dict:
    """The TTT settings as saved in config.json (``model.config.inplace_ttt``, with the training
    record), brought up to date with the layers' `TTTConfig`."""
    found = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    layers = dict(ttt_layers(model)) if found is not None else {}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    return next(iter(layers.values())).config.write_into(found)


def set_context_parallel(model: nn.Module, group) -> None:
    """Split sequences along time across the ranks of `group` (a `torch.distributed` process
    group; None: off). Each rank then passes its contiguous slice of the rows (``input_ids``,
    ``labels``) with ``position_ids`` the global positions of its tokens, and no cache; the TTT
    layers exchange their carries over `group`. Attention needs its own context parallelism
    with the same contiguous split (PyTorch's ``context_parallel`` without load balancing)."""
    layers = list(ttt_layers(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    for _, layer in layers:
        layer.cp_group = group


def _check_float_weights(model: nn.Module) -> None:
    """The fast weights add to the down projections in float: refuse packed (quantized) weights."""
    packed = sorted({type(m).__name__ for m in model.modules() for p in m.parameters(recurse=False) if not p.is_floating_point()})
    if packed:
        raise ValueError(
            f"{type(model).__name__} holds quantized weights ({', '.join(packed)}); In-Place TTT needs float weights: load the "
            "model unquantized (a GGUF file with quantization_config=GgufConfig(dequantize=True), or inplace_ttt.families.hf.load_causal_lm)"
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
