"""Kyutai Moshi: convert an `LMModel` in place, stream it with `LMGen`, save and load TTT weights.

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
(positions ``0..T-1``); the target source ``token_embeddings`` is the summed text + audio
input embeddings (the temporal transformer's input), kept by a forward pre-hook.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from moshi.models.lm import LMModel
from moshi.modules.streaming import State, StreamingModule
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from ..config import TTTConfig
from ..files import check_safetensors
from ..layer import GatedMLPSpec, InPlaceTTTMLP, is_ttt_param
from ..ops import state_dtype
from ..ops.state import FixedStepState
from . import MOSHI_TTT_WEIGHTS as TTT_WEIGHTS
from .moshi_rope import YarnRotaryEmbedding, check_rope_scaling, yarn_parameters
from .probe import ModelProbe
from .record import TRAINING_KEY, split_training

SAFETENSORS = (".safetensors", ".sft", ".sfts")  # the suffixes moshi's loaders read as safetensors (any other they unpickle)
SETTINGS_KEY = "inplace_ttt"  # metadata key of the TTT weights file


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


class _ForwardContext:
    """The temporal transformer's input of the forward in flight (the summed input embeddings).

    While gradients are recorded it also remembers which embeddings each TTT layer's input
    belongs to: an activation checkpoint re-runs the layer in the backward, possibly after
    later forwards have replaced `embeddings` (gradient accumulation, a second loss pass).
    """

    def __init__(self) -> None:
        self.embeddings: Tensor | None = None
        self.by_layer_input = WeakTensorKeyDictionary()

    def source_for(self, layer_input: Tensor) -> Tensor | None:
        if not torch.is_grad_enabled():
            return self.embeddings
        if layer_input not in self.by_layer_input:
            self.by_layer_input[layer_input] = self.embeddings
        return self.by_layer_input[layer_input]

    def __reduce__(self):
        return (_ForwardContext, ())  # a copy (or a pickle) has no forward in flight


@dataclass
class _TTTStreamingState(State):
    steps: FixedStepState | None = None

    def reset(self, reset_mask: Tensor) -> None:
        super().reset(reset_mask)
        self.steps.reset(reset_mask)


class MoshiTTTGating(InPlaceTTTMLP, StreamingModule):
    """A Moshi gating with In-Place TTT; its streaming state is one of moshi's streaming states."""

    def __init__(self, gating: nn.Module, config: TTTConfig, layer_idx: int, context: _ForwardContext):
        super().__init__(gating, config, MoshiGatingSpec(), layer_idx=layer_idx)
        self._context = context
        self._layer_source: Tensor | None = None  # set by `_bind_source` as the layer starts

    def _init_streaming_state(self, batch_size: int) -> _TTTStreamingState:
        w_out, w_in = self.down.weight, self.linear_in.weight
        d, h = w_out.shape
        steps = FixedStepState(batch_size, d, h, d, self.ttt.kernel, w_in.dtype, state_dtype(w_in.dtype), w_in.device)
        return _TTTStreamingState(batch_size, w_in.device, steps=steps)

    def forward(self, x: Tensor) -> Tensor:
        source = None
        if self.target_source == "token_embeddings":
            source, self._layer_source = self._layer_source, None
            if source is None or source.shape[:2] != x.shape[:2]:
                raise RuntimeError(
                    f"TTT layer {self.layer_idx} got input {list(x.shape)} but the model's input embeddings are "
                    f"{None if source is None else list(source.shape)}; call the LMModel (or LMGen), not the layer"
                )
        state = self._streaming_state
        if state is None:
            return super().forward(x, target_source=source)
        if self.cp_group is not None:
            raise ValueError("streaming runs on one rank: clear the context-parallel group first (inplace_ttt.set_context_parallel(lm, None))")
        z = self.spec.hidden(self, x)
        src = self._source(x, source)
        fast = [self.fixed_step(z[:, t], src[:, t], state.steps, state.exec_mask) for t in range(x.shape[1])]
        return self.down(z) + torch.stack(fast, 1)


def weighted_cross_entropy(logits: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """``sum(w * CE) / sum(w)`` over positions with ``w > 0`` (`logits` ``[..., V]``)."""
    keep = weights > 0
    ce = F.cross_entropy(logits[keep].float(), target[keep], reduction="none")
    return (ce * weights[keep]).sum() / weights[keep].sum().clamp(min=1e-12)


def training_loss(lm: nn.Module, codes: Tensor, first_codebook_weight: float = 1.0, text_padding_weight: float = 1.0) -> dict[str, Tensor]:
    """moshi-finetune's loss on `codes` ``[B, K, T]``: the text stream's cross-entropy plus the
    model's audio codebooks', each a weighted mean over the valid positions (`LMOutput`'s masks),
    the first audio codebook weighted by `first_codebook_weight` and text padding tokens by
    `text_padding_weight`. Returns ``loss``, ``text_loss`` and ``audio_loss``."""
    out = lm(codes)
    text_target = codes[:, : lm.audio_offset]
    text_w = out.text_mask.float()
    padding = (text_target == lm.text_padding_token_id) | (text_target == lm.end_of_text_padding_id)
    text_w = torch.where(padding, text_w * text_padding_weight, text_w)
    audio_target = codes[:, lm.audio_offset : lm.audio_offset + lm.dep_q]
    audio_w = out.mask.float()
    audio_w[:, 0] *= first_codebook_weight
    text = weighted_cross_entropy(out.text_logits, text_target, text_w)
    audio = weighted_cross_entropy(out.logits, audio_target, audio_w)
    return {"loss": text + audio, "text_loss": text.detach(), "audio_loss": audio.detach()}


def owns(model: nn.Module) -> bool:
    return isinstance(model, LMModel)


def settings(lm: nn.Module) -> dict:
    """The TTT settings kept on the converted `LMModel` (saved in ttt.safetensors' metadata)."""
    found = getattr(lm, SETTINGS_KEY, None)
    if found is None:
        raise ValueError("this LMModel has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    return found


def set_context_parallel(lm: nn.Module, group) -> None:
    """Split conversations along time across the ranks of `group` (None: off): each rank passes a
    contiguous slice of the steps of every row, and the TTT layers exchange their carries over
    `group` (the rows' positions continue from the ranks before). Attention needs its own context
    parallelism with the same split. Streaming (`LMGen`) runs on one rank: clear the group first."""
    settings(lm)  # converted?
    for _, layer in ttt_layers(lm):
        layer.cp_group = group


def save(lm: nn.Module, directory: str | Path) -> Path:
    return save_ttt(lm, directory)


def load(directory: str | Path, lm_kwargs: dict[str, Any] | None = None, **options) -> nn.Module:
    """`load_moshi` on what `save` wrote into `directory`."""
    directory = Path(directory)
    return load_moshi(directory / "model.safetensors", lm_kwargs, ttt_file=directory / TTT_WEIGHTS, **options)


def ttt_layers(lm: nn.Module) -> Iterator[tuple[int, MoshiTTTGating]]:
    """`(layer index, TTT gating)` for every TTT layer of a converted `LMModel`."""
    for idx, layer in enumerate(lm.transformer.layers):
        if isinstance(layer.gating, MoshiTTTGating):
            yield idx, layer.gating


def update_counts(lm: nn.Module) -> dict[int, Tensor]:
    """Per TTT layer, the chunk updates folded in per row since streaming started (while streaming)."""
    return {i: layer._streaming_state.steps.updates.clone() for i, layer in ttt_layers(lm) if layer._streaming_state is not None}


def convert(lm: nn.Module, config: TTTConfig, *, rope_scaling: dict | None = None) -> nn.Module:
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
    context = _ForwardContext()
    for i in indices:
        layers[i].gating = MoshiTTTGating(layers[i].gating, config, i, context)
        layers[i].register_forward_pre_hook(_bind_source)
    lm.transformer._ttt_context = context  # found through the module, so that copies of the model stay self-contained
    lm.transformer.register_forward_pre_hook(_keep_embeddings)
    if rope_scaling is not None:
        _install_yarn(lm.transformer, rope_scaling)
    for module in lm.modules():  # moshi caches each module's streaming children: find the new ones
        if isinstance(module, StreamingModule):
            module._cached_children = None
    setattr(lm, SETTINGS_KEY, {**config.to_dict(), "layers": list(indices), "rope_scaling": rope_scaling})
    return lm


def _keep_embeddings(transformer: nn.Module, args: tuple) -> None:
    transformer._ttt_context.embeddings = args[0]


def _bind_source(layer: nn.Module, args: tuple) -> None:
    """Give a TTT layer's gating the embeddings of the forward its input belongs to."""
    layer.gating._layer_source = layer.gating._context.source_for(args[0])


def _install_yarn(transformer: nn.Module, rope_scaling: dict) -> None:
    old = transformer.rope
    head_dim = transformer.layers[0].self_attn.embed_dim // transformer.layers[0].self_attn.num_heads
    inv_freq, scale = yarn_parameters(head_dim, float(old.max_period), **rope_scaling)
    device = next(transformer.parameters()).device
    rope = YarnRotaryEmbedding(old.interleave, inv_freq.to(device), scale, rope_scaling)
    for module in transformer.modules():
        if getattr(module, "rope", None) is old:
            module.rope = rope


# save / load ----------------------------------------------------------------------------------


def save_ttt(lm: nn.Module, directory: str | Path) -> Path:
    """Write a converted model as moshi's own files plus ours, in `directory`:

    ``model.safetensors`` (every pretrained-layout weight, trained ones included; moshi's
    `get_moshi_lm` loads it) and ``ttt.safetensors`` (the TTT parameters, with the settings
    in its metadata). Load both with `load_moshi`.
    """
    from safetensors.torch import save_file

    saved = settings(lm)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in lm.state_dict().items()}
    ttt = {k: state.pop(k) for k in list(state) if is_ttt_param(k)}
    save_file(ttt, str(directory / (TTT_WEIGHTS + ".tmp")), metadata={SETTINGS_KEY: json.dumps(saved)})
    save_file(state, str(directory / "model.safetensors.tmp"))
    (directory / "model.safetensors.tmp").replace(directory / "model.safetensors")
    (directory / (TTT_WEIGHTS + ".tmp")).replace(directory / TTT_WEIGHTS)
    return directory


def load_base(model_file: str | Path, lm_kwargs: dict[str, Any] | None = None, *, device="cpu", dtype=torch.float32) -> nn.Module:
    """An unconverted `LMModel` from moshi's own loader (safetensors only: moshi would unpickle anything else)."""
    from moshi.models.loaders import get_moshi_lm

    require_safetensors(model_file)
    return get_moshi_lm(str(model_file), lm_kwargs=lm_kwargs, device=device, dtype=dtype)


def require_safetensors(path: str | Path) -> None:
    """Refuse weights that are not a whole safetensors file: moshi's loaders `torch.load` (unpickle)
    any other suffix, and a file cut short would fail deep inside them."""
    if Path(path).suffix not in SAFETENSORS:
        raise ValueError(
            f"{path} is not a safetensors file ({', '.join(SAFETENSORS)}); only safetensors weights are read (other formats are pickles, never loaded)"
        )
    check_safetensors(path)


def saved_settings(ttt_file: str | Path) -> tuple[TTTConfig, dict | None, list[dict]]:
    """The `TTTConfig`, YaRN settings and training record (`adapters.record`) a
    ``ttt.safetensors`` of `save_ttt` carries."""
    from safetensors import safe_open

    require_safetensors(ttt_file)
    with safe_open(str(ttt_file), framework="pt") as f:
        raw = (f.metadata() or {}).get(SETTINGS_KEY)
    if raw is None:
        raise ValueError(f"{ttt_file} holds no In-Place TTT settings (metadata key '{SETTINGS_KEY}'): not written by save_ttt")
    settings, training = split_training(json.loads(raw))
    rope_scaling = settings.pop("rope_scaling", None)  # not a TTTConfig field
    return TTTConfig.from_dict(settings), rope_scaling, training


def load_moshi(
    model_file: str | Path,
    lm_kwargs: dict[str, Any] | None = None,
    *,
    ttt_file: str | Path | None = None,
    config: TTTConfig | None = None,
    rope_scaling: dict | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    clip_tau: float | None = ...,
) -> nn.Module:
    """Load a Moshi LM with moshi's `get_moshi_lm` and make it an In-Place TTT model.

    From published files: ``load_moshi(path_to_model_safetensors, config=TTTConfig(...))``
    (`lm_kwargs` defaults to Moshi 7B's, as in moshi). From `save_ttt`'s output: also give
    ``ttt_file`` (its ``ttt.safetensors``): the settings come from it and the trained TTT
    weights are loaded (all must be there). `clip_tau` overrides the saved inference clipping,
    `rope_scaling` the saved YaRN settings.
    """
    from moshi.models.loaders import get_moshi_lm
    from safetensors.torch import load_file

    require_safetensors(model_file)
    ttt_weights: dict[str, Tensor] = {}
    training: list[dict] = []
    if ttt_file is not None:
        config, saved_rope_scaling, training = saved_settings(ttt_file)
        rope_scaling = saved_rope_scaling if rope_scaling is None else rope_scaling
        ttt_weights = load_file(str(ttt_file))
    if config is None:
        raise ValueError("load_moshi: give config=TTTConfig(...) to convert a pretrained model, or ttt_file= to load a converted one")
    if clip_tau is not ...:
        config = config.replace(clip_tau=clip_tau)
    lm = get_moshi_lm(str(model_file), lm_kwargs=lm_kwargs, device=device, dtype=dtype)
    convert(lm, config, rope_scaling=rope_scaling)
    if training:
        getattr(lm, SETTINGS_KEY)[TRAINING_KEY] = training
    if ttt_file is not None:
        params = {k: p for k, p in lm.named_parameters() if is_ttt_param(k)}
        missing, unknown = sorted(set(params) - set(ttt_weights)), sorted(set(ttt_weights) - set(params))
        if missing or unknown:
            raise ValueError(f"{ttt_file} does not match the model's TTT layers: missing {missing[:4]}, unexpected {unknown[:4]}")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(ttt_weights[k])
    return lm


# the doctor's view of a Moshi model -------------------------------------------------------------


def _positions(batch: dict) -> Tensor:
    """Each row is one conversation from step 0; steps where every stream is missing (-1) are padding."""
    codes = batch["codes"]
    steps = torch.arange(codes.shape[-1], device=codes.device).expand(codes.shape[0], -1)
    return torch.where((codes != -1).any(1), steps, -1)


def _logits(lm: nn.Module, batch: dict) -> Tensor:
    """The text logits and the model's audio logits, ``[B, T, (1 + dep_q) * card]`` (the positions the
    delays leave empty at 0)."""
    with torch.no_grad():
        out = lm(batch["codes"])
    text = out.text_logits[:, 0].float().nan_to_num(0)
    audio = out.logits.float().nan_to_num(0).permute(0, 2, 1, 3).flatten(2)
    return torch.cat([text, audio], -1)


def _causality_gap(lm: nn.Module, batch: dict) -> float:
    """How far changing the codes of the middle step moves the text logits of the steps up to it.

    The temporal transformer (where the TTT layers are) reads the codes of step t - 1 at step t,
    so its outputs, and the text logits, of steps 0..t must not move. (Audio logits are not
    compared: by moshi's delays, the depformer at a step reads later text on purpose.)"""
    codes = batch["codes"]
    t = codes.shape[-1] // 2
    changed = codes.clone()
    changed[:, :, t] = torch.where(codes[:, :, t] >= 0, (codes[:, :, t] + 1) % 2, codes[:, :, t])
    with torch.no_grad():
        before, after = lm(codes).text_logits, lm(changed).text_logits
    return (after[..., : t + 1, :] - before[..., : t + 1, :]).float().nan_to_num(0).abs().max().item()


PROBE = ModelProbe(
    positions=_positions,
    logits=_logits,
    loss=lambda lm, batch: training_loss(lm, batch["codes"])["loss"],
    causality_gap=_causality_gap,
    original_mlp=lambda base, idx: base.transformer.layers[idx].gating,
    settings=lambda lm: getattr(lm, SETTINGS_KEY),
)
