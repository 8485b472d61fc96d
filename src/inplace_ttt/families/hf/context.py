"""How a converted transformers model hands each forward's `TTTContext` to its TTT layers.

A decoder layer calls its MLP with the hidden states alone, so the context travels the way
transformers hands attention its extra arguments:

1. a forward pre-hook on the base model builds the `TTTContext` once, from the forward's own
   arguments (``attention_mask`` / ``position_ids`` / the cache length give the TTT positions,
   padding at -1; the cache, adopted, holds the fast-weight states), computes the token
   embeddings itself when a layer's target reads them (and passes them on as
   ``inputs_embeds``), and adds the context to the keyword arguments, which the base model
   passes to every decoder layer and each decoder layer to its attention;
2. in a layer with TTT, a pre-hook on the attention takes the context out of its arguments and
   places it on the layer's MLP, whose own pre-hook hands it to `InPlaceTTTMLP.forward`.

Nothing outlives the call: an activation checkpoint's recomputation replays the decoder layer with
the arguments of its own forward, context included, so any number of forwards may run before a
backward.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
import torch.nn as nn
from torch import Tensor

from ...context import TTTContext
from ...layer import InPlaceTTTMLP
from .cache import FastWeightCacheMixin, adopt_cache

CONTEXT_KEY = "ttt_context"  # the keyword argument that carries the context from the base model to the layers
_PLACED = "_placed_ttt_context"


def install(base: nn.Module, config, layers: dict[int, nn.Module]) -> None:
    """Hook the base model (which owns the decoder `layers`, by index) so each forward hands a context to its TTT MLPs."""
    ttt = [layer.mlp for layer in layers.values() if isinstance(layer.mlp, InPlaceTTTMLP)]
    embeddings = base.get_input_embeddings() if any(m.target_source == "token_embeddings" for m in ttt) else None
    base.register_forward_pre_hook(partial(_build_context, config, inspect.signature(base.forward), ttt, embeddings), with_kwargs=True)
    for layer in layers.values():
        if isinstance(layer.mlp, InPlaceTTTMLP):
            layer.self_attn.register_forward_pre_hook(partial(_place_context, layer.mlp), with_kwargs=True)
            layer.mlp.register_forward_pre_hook(_hand_context, with_kwargs=True)
        else:  # no TTT here: keep the context away from its attention all the same
            layer.self_attn.register_forward_pre_hook(_drop_context, with_kwargs=True)


def _build_context(config, signature: inspect.Signature, ttt: list[InPlaceTTTMLP], embed: nn.Module | None, module, args, kwargs):
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
    if any(m.cp_group is not None for m in ttt):
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
    embeddings = bound.get("inputs_embeds")
    if embed is not None and embeddings is None:  # computed once here, for the model and the TTT targets alike
        embeddings = kwargs["inputs_embeds"] = embed(bound["input_ids"])
        args, kwargs = _without_input_ids(signature, args, kwargs)
    kwargs[CONTEXT_KEY] = TTTContext(
        positions=ttt_positions(batch, length, bound.get("attention_mask"), bound.get("position_ids"), past, inputs.device),
        embeddings=embeddings,
        state_of=cache.ttt_state if cache is not None else None,
    )
    return args, kwargs


def _without_input_ids(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's arguments with ``input_ids`` None (the embeddings stand in for them)."""
    names = list(signature.parameters)
    if "input_ids" in kwargs:
        kwargs["input_ids"] = None
    elif names.index("input_ids") < len(args):
        args = tuple(None if names[i] == "input_ids" else a for i, a in enumerate(args))
    return args, kwargs


def _place_context(mlp: InPlaceTTTMLP, attention, args, kwargs):
    context = kwargs.pop(CONTEXT_KEY, None)
    if context is None:
        raise RuntimeError(f"TTT layer {mlp.layer_idx} got no TTTContext from the model's forward; call the model, not the decoder layer")
    mlp.__dict__[_PLACED] = context
    return args, kwargs


def _drop_context(attention, args, kwargs):
    kwargs.pop(CONTEXT_KEY, None)
    return args, kwargs


def _hand_context(mlp: InPlaceTTTMLP, args, kwargs):
    if len(args) > 1 or {"context", "position_ids", "target_source", "state"} & kwargs.keys():  # called by hand with its own arguments
        return None
    context = mlp.__dict__.pop(_PLACED, None)  # taken: it serves this one call
    if context is None:
        raise RuntimeError(f"TTT layer {mlp.layer_idx} was called outside its decoder layer's forward; call the model, or pass the layer a TTTContext")
    x = args[0] if args else kwargs["x"]
    if context.positions is not None and tuple(context.positions.shape) != tuple(x.shape[:2]):
        raise RuntimeError(
            f"TTT layer {mlp.layer_idx} got input {list(x.shape)} but the model forward described {list(context.positions.shape)} tokens; call the model, not the layer"
        )
    return args, {**kwargs, "context": context}


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
