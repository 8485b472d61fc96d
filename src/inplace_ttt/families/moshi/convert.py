"""Kyutai Moshi: convert an `LMModel` in place and stream it with `LMGen`.

Moshi's feed-forward is `ActivationGating`: a fused ``linear_in`` (``[2h, d]``: gate rows,
then up rows), its ``activation`` (SiLU in Moshi 7B) and ``linear_out``. TTT goes into the
temporal transformer only (the depformer has one gating per codebook step). Each chosen
layer's ``gating`` becomes a `MoshiTTTGating`: an `InPlaceTTTMLP` that adopts the gating's
own modules (same parameters, same names) and is also one of moshi's `StreamingModule`\\ s, so
its fast weights live in moshi's streaming state: `LMGen`'s steps update them, and
`reset_streaming(mask)` (a new conversation) restores the pretrained weights of those rows.

The streaming step is CUDA-graph safe (`InPlaceTTTMLP.fixed_step`): LMGen captures its step in
a CUDA graph on GPU, and the TTT layers run inside it, updating preallocated state in place.

Training: `LMModel.forward(codes)` runs the chunked op over each row as one conversation
(positions ``0..T-1``). Each forward of the temporal transformer builds one `TTTContext` (the
target source ``token_embeddings`` is its input, the summed text + audio embeddings), and each
TTT layer's pre-hook places it on the layer's gating, which hands it to `InPlaceTTTMLP.forward`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from moshi.models.lm import LMModel
from moshi.modules.streaming import State, StreamingModule
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from ...config import CONFIG_KEY, TTTConfig
from ...context import TTTContext
from ...layer import GatedMLPSpec, InPlaceTTTMLP
from ...ops import state_dtype
from ...ops.state import FixedStepState
from .rope import YarnRotaryEmbedding, check_rope_scaling, yarn_parameters

SETTINGS_KEY = CONFIG_KEY  # where a converted LMModel keeps its TTT settings (and ttt.safetensors' metadata key)


@dataclass(frozen=True)
class MoshiGatingSpec(GatedMLPSpec):
    """Moshi's `ActivationGating`: ``linear_out(activation(gate) * up)`` with ``[gate; up] = linear_in(x)``."""

    gate: str = "linear_in"
    up: str = "linear_in"
    down: str = "linear_out"
    act: str = "activation"

    def hidden(self, mlp: nn.Module, x: Tensor) -> Tensor:
        gate, up = mlp.linear_in(x).unflatten(-1, (2, -1)).unbind(-2)  # as moshi: view(B, T, 2, h)
        return mlp.activation(gate) * up


class _Contexts:
    """The `TTTContext` of each forward of one converted model's temporal transformer.

    The transformer's pre-hook builds the context of the forward starting (`begin`); each TTT
    layer's pre-hook asks for the context its input belongs to (`of`). While gradients are
    recorded the answer is remembered by the layer's input tensor: an activation checkpoint
    re-runs the layer in the backward with that same input, possibly after later forwards
    began (gradient accumulation, a second loss pass)."""

    def __init__(self) -> None:
        self.current: TTTContext | None = None
        self.by_layer_input = WeakTensorKeyDictionary()

    def begin(self, transformer: nn.Module, args: tuple) -> None:
        self.current = TTTContext(embeddings=args[0])

    def of(self, layer_input: Tensor) -> TTTContext | None:
        if not torch.is_grad_enabled():
            return self.current
        if layer_input not in self.by_layer_input:
            self.by_layer_input[layer_input] = self.current
        return self.by_layer_input[layer_input]

    def __reduce__(self):
        return (_Contexts, ())  # a copy (or a pickle) has no forward in flight


@dataclass
class _TTTStreamingState(State):
    steps: FixedStepState | None = None

    def reset(self, reset_mask: Tensor) -> None:
        super().reset(reset_mask)
        self.steps.reset(reset_mask)


class MoshiTTTGating(InPlaceTTTMLP, StreamingModule):
    """A Moshi gating with In-Place TTT; its streaming state is one of moshi's streaming states."""

    def __init__(self, gating: nn.Module, config: TTTConfig, layer_idx: int, contexts: _Contexts):
        super().__init__(gating, config, MoshiGatingSpec(), layer_idx=layer_idx)
        self._contexts = contexts
        self._placed: TTTContext | None = None  # placed by `_place_context` as the layer starts; serves one call

    def _init_streaming_state(self, batch_size: int) -> _TTTStreamingState:
        w_out, w_in = self.down.weight, self.linear_in.weight
        d, h = w_out.shape
        steps = FixedStepState(batch_size, d, h, d, self.ttt.kernel, w_in.dtype, state_dtype(w_in.dtype), w_in.device)
        return _TTTStreamingState(batch_size, w_in.device, steps=steps)

    def forward(self, x: Tensor) -> Tensor:
        context, self._placed = self._placed, None
        if context is None or context.embeddings is None or context.embeddings.shape[:2] != x.shape[:2]:
            raise RuntimeError(
                f"TTT layer {self.layer_idx} got input {list(x.shape)} but no context of a forward of that shape; call the LMModel (or LMGen), not the layer"
            )
        state = self._streaming_state
        if state is None:
            return super().forward(x, context)
        if self.cp_group is not None:
            raise ValueError("streaming runs on one rank: clear the context-parallel group first (inplace_ttt.set_context_parallel(lm, None))")
        z = self.spec.hidden(self, x)
        src = self._source(x, context.embeddings)
        fast = [self.fixed_step(z[:, t], src[:, t], state.steps, state.exec_mask) for t in range(x.shape[1])]
        return self.down(z) + torch.stack(fast, 1)


def settings(lm: nn.Module) -> dict:
    """The TTT settings kept on the converted `LMModel` (saved in ttt.safetensors' metadata),
    brought up to date with the layers' `TTTConfig`."""
    found = getattr(lm, SETTINGS_KEY, None)
    layers = dict(ttt_layers(lm)) if found is not None else {}
    if not layers:
        raise ValueError("this LMModel has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    return next(iter(layers.values())).config.write_into(found)


def set_context_parallel(lm: nn.Module, group) -> None:
    """Split conversations along time across the ranks of `group` (None: off): each rank passes a
    contiguous slice of the steps of every row, and the TTT layers exchange their carries over
    `group` (the rows' positions continue from the ranks before). Attention needs its own context
    parallelism with the same split. Streaming (`LMGen`) runs on one rank: clear the group first."""
    settings(lm)  # converted?
    for _, layer in ttt_layers(lm):
        layer.cp_group = group


def ttt_layers(lm: nn.Module) -> Iterator[tuple[int, MoshiTTTGating]]:
    """`(layer index, TTT gating)` for every TTT layer of a converted `LMModel`."""
    for idx, layer in enumerate(lm.transformer.layers):
        if isinstance(layer.gating, MoshiTTTGating):
            yield idx, layer.gating


def update_counts(lm: nn.Module) -> dict[int, Tensor]:
    """Per TTT layer, the chunk updates folded in per row since streaming started (while streaming)."""
    return {i: layer._streaming_state.steps.updates.clone() for i, layer in ttt_layers(lm) if layer._streaming_state is not None}


def convert(lm: nn.Module, config: TTTConfig, *, rope_scaling: dict | None = None, cp_group=None) -> nn.Module:
    """Put In-Place TTT into the temporal transformer of a moshi `LMModel`, in place.

    Exact warm start (the converted model computes what the original did until the new
    parameters train). `rope_scaling`: YaRN for long conversations, transformers' keys, e.g.
    ``{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 3000}``.
    Raises, before changing anything, for a gating TTT cannot read, a layer index outside the
    model, a model converted already or one that is streaming.
    """
    if not isinstance(lm, LMModel):
        raise ValueError(f"{type(lm).__name__} is not a moshi LMModel")
    if getattr(lm, SETTINGS_KEY, None) is not None or any(isinstance(m, MoshiTTTGating) for m in lm.modules()):
        raise ValueError("this LMModel is already an In-Place TTT model; convert the original model instead")
    if any(isinstance(m, StreamingModule) and m.is_streaming for m in lm.modules()):
        raise ValueError("convert the LMModel before streaming it (leave `streaming()` / LMGen first)")
    if rope_scaling is not None:
        rope_scaling = check_rope_scaling(rope_scaling)
        if lm.transformer.rope is None:
            raise ValueError("rope_scaling: this LMModel's temporal transformer has no rotary embedding to scale")
    layers = lm.transformer.layers
    indices = config.layer_indices(len(layers))
    spec = MoshiGatingSpec()
    for i in indices:
        gating = layers[i].gating
        missing = ["gating"] if gating is None or isinstance(gating, nn.ModuleList) else spec.missing(gating)
        if missing:
            raise ValueError(
                f"layer {i} of the temporal transformer has no gating TTT can read ({type(gating).__name__}, "
                f"missing {missing}); In-Place TTT needs an ActivationGating with linear_in, linear_out and activation"
            )
    config = config.replace()  # this model's own copy, shared by its layers
    contexts = _Contexts()
    for i in indices:
        layers[i].gating = MoshiTTTGating(layers[i].gating, config, i, contexts)
        layers[i].register_forward_pre_hook(_place_context)
    lm.transformer._ttt_contexts = contexts  # found through the module, so that copies of the model stay self-contained
    lm.transformer.register_forward_pre_hook(_begin_context)
    if rope_scaling is not None:
        _install_yarn(lm.transformer, rope_scaling)
    for module in lm.modules():  # moshi caches each module's streaming children: find the new ones
        if isinstance(module, StreamingModule):
            module._cached_children = None
    setattr(lm, SETTINGS_KEY, {**config.to_dict(), "layers": list(indices), "rope_scaling": rope_scaling})
    set_context_parallel(lm, cp_group)
    return lm


def _begin_context(transformer: nn.Module, args: tuple) -> None:
    transformer._ttt_contexts.begin(transformer, args)


def _place_context(layer: nn.Module, args: tuple) -> None:
    """Give a TTT layer's gating the context of the forward its input belongs to."""
    layer.gating._placed = layer.gating._contexts.of(args[0])


def _install_yarn(transformer: nn.Module, rope_scaling: dict) -> None:
    old = transformer.rope
    head_dim = transformer.layers[0].self_attn.embed_dim // transformer.layers[0].self_attn.num_heads
    inv_freq, scale = yarn_parameters(head_dim, float(old.max_period), **rope_scaling)
    device = next(transformer.parameters()).device
    rope = YarnRotaryEmbedding(old.interleave, inv_freq.to(device), scale, rope_scaling)
    for module in transformer.modules():
        if getattr(module, "rope", None) is old:
            module.rope = rope
