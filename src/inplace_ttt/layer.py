"""`InPlaceTTTMLP`: a gated MLP whose down projection becomes a fast weight.

The wrapper adopts the wrapped MLP's own submodules under their own names (so
``...mlp.down_proj.weight`` stays the same `Parameter`, found by optimizers, LoRA and
checkpoints), computes the gated hidden state with the MLP's own projections and activation,
and adds the fast-weight term ``lr z S^T`` to the MLP's own down projection. New parameters
live in `self.ttt` (a `TargetGenerator`), deliberately not `nn.Linear`, so that a LoRA
"all-linear" rule cannot wrap them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .clipping import UpdateRecord
from .config import TTTConfig
from .context import TTTContext
from .ops import chunk_conv, context_parallel_ttt, inplace_ttt, sequence_shard, state_dtype
from .ops.recurrent import fixed_step, prefill, token_step
from .ops.state import FastWeightState, FixedStepState


@dataclass(frozen=True)
class GatedMLPSpec:
    """How to read a gated MLP ``down(act(gate(x)) * up(x))``: the names of its parts.

    The default matches transformers' Llama/Qwen/Mistral MLPs. Adapters for other layouts
    (Moshi's fused ``linear_in``) subclass it and override `hidden`.
    """

    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    act: str = "act_fn"

    def part_names(self) -> tuple[str, ...]:
        return (self.gate, self.up, self.down, self.act)

    def missing(self, mlp: nn.Module) -> list[str]:
        """Names of required parts `mlp` lacks (the down projection must be a Linear-like with a 2-D weight)."""
        missing = [n for n in self.part_names() if not hasattr(mlp, n)]
        down = getattr(mlp, self.down, None)
        if down is not None and getattr(getattr(down, "weight", None), "dim", lambda: 0)() != 2:
            missing.append(f"{self.down}.weight [d, h]")
        return missing

    def hidden(self, mlp: nn.Module, x: Tensor) -> Tensor:
        """The gated hidden state ``z``, computed with the MLP's own modules."""
        return getattr(mlp, self.act)(getattr(mlp, self.gate)(x)) * getattr(mlp, self.up)(x)


@contextlib.contextmanager
def ttt_switched_off(layers: Iterable[InPlaceTTTMLP]):
    """The model of `layers` with TTT off for a block (``eta = 0`` in their settings, restored
    after): what it computes without its fast weights, for a comparison on the same batch. The
    layers record nothing meanwhile (their `last_stats` stay those of the forward with TTT on)."""
    layers = list(layers)
    configs = {id(layer.config): layer.config for layer in layers}  # a model's layers share one
    saved = {key: config.ttt_lr for key, config in configs.items()}
    recording = [layer.record_stats for layer in layers]
    try:
        for config in configs.values():
            config.ttt_lr = 0.0
        for layer in layers:
            layer.record_stats = False
        yield
    finally:
        for key, config in configs.items():
            config.ttt_lr = saved[key]
        for layer, was in zip(layers, recording):
            layer.record_stats = was


def is_ttt_param(name: str) -> bool:
    """Whether a parameter name (of any model holding `InPlaceTTTMLP` layers) is one of the new
    TTT parameters: they live in each layer's `ttt` module."""
    return ".ttt." in name or name.startswith("ttt.")


class TargetGenerator(nn.Module):
    """``V = Conv1D(X) W_target^T``, the convolution kept inside chunks.

    Init (exact warm start with gradient from the first step): the convolution is zero, so
    ``V = 0`` and the model computes exactly what the pretrained one did, while ``W_target``
    is non-zero (the identity, or the release's random diagonal), so the convolution's gradient
    ``W_target^T dL/dV * X`` is non-zero at the first backward; after one optimizer step with a
    non-zero learning rate the convolution is non-zero and ``W_target`` gets gradient too. (Both factors zero would block
    all gradient; small random values would break the warm start: both happened in the system
    this library replaces.) The ablations drop one factor: without the convolution ``W_target``
    starts at zero (its gradient ``dL/dV^T X`` is non-zero); without the projection the
    convolution alone starts at zero.
    """

    def __init__(self, source_dim: int, model_dim: int, config: TTTConfig, *, dtype=None, device=None):
        super().__init__()
        self.kernel = config.conv_kernel if config.target_conv else 1
        if config.target_conv:
            self.conv_weight = nn.Parameter(torch.zeros(source_dim, self.kernel, dtype=dtype, device=device))
        else:
            self.register_parameter("conv_weight", None)
        if not config.target_projection:
            if source_dim != model_dim:
                raise ValueError(f"target_projection=False needs a target source of the model's width {model_dim}; got {source_dim}")
            self.register_parameter("target_weight", None)
            return
        if not config.target_conv:
            weight = torch.zeros(model_dim, source_dim, dtype=dtype, device=device)
        elif config.target_init == "identity":
            weight = torch.eye(model_dim, source_dim, dtype=dtype, device=device)
        else:
            diagonal = torch.randn(min(model_dim, source_dim), device=device) * config.target_init_std
            weight = torch.zeros(model_dim, source_dim, dtype=dtype, device=device)
            weight.diagonal().copy_(diagonal)
        self.target_weight = nn.Parameter(weight)

    def convolve(self, x: Tensor, seg_key: Tensor) -> Tensor:
        return x if self.conv_weight is None else chunk_conv(x, self.conv_weight, seg_key)

    def project(self, y: Tensor) -> Tensor:
        return y if self.target_weight is None else F.linear(y, self.target_weight.to(y.dtype))

    def forward(self, x: Tensor, seg_key: Tensor) -> Tensor:
        return self.project(self.convolve(x, seg_key))

    def taps(self, dtype: torch.dtype) -> Tensor:
        """The convolution's ``[F, kernel]`` weight; without one, the identity (a single centre tap)."""
        if self.conv_weight is not None:
            return self.conv_weight.to(dtype)
        return torch.ones(self.target_weight.shape[1], 1, dtype=dtype, device=self.target_weight.device)

    def starts_at_zero(self) -> bool:
        """Whether ``V`` is zero as it is now (a fresh conversion: the model is the pretrained one)."""
        factor = self.conv_weight if self.conv_weight is not None else self.target_weight
        return not bool(factor.any())

    def blocks_gradient(self) -> bool:
        """Both factors zero: ``V = 0`` and neither can get gradient."""
        return self.conv_weight is not None and self.target_weight is not None and not self.conv_weight.any() and not self.target_weight.any()


class InPlaceTTTMLP(nn.Module):
    """A gated MLP with In-Place TTT on its down projection.

    Args:
        mlp: the gated MLP to wrap; its submodules are adopted, not copied.
        config: chunk size, learning rate, target source, kernel and clipping.
        spec: how to read `mlp` (default: ``gate_proj``/``up_proj``/``down_proj``/``act_fn``).
        layer_idx: the decoder layer it sits in (names its state in a model's cache).
    """

    def __init__(self, mlp: nn.Module, config: TTTConfig, spec: GatedMLPSpec | None = None, layer_idx: int | None = None):
        super().__init__()
        spec = spec or GatedMLPSpec()
        missing = spec.missing(mlp)
        if missing:
            raise ValueError(f"{type(mlp).__name__} is not a gated MLP this spec can read: missing {missing}")
        for name, child in mlp.named_children():
            self.add_module(name, child)
        for name in spec.part_names():  # parts that are plain attributes (e.g. an activation function)
            if name not in self._modules:
                setattr(self, name, getattr(mlp, name))
        self.spec = spec
        self.wrapped_type = type(mlp).__name__
        self.layer_idx = layer_idx
        self.record_stats = False  # set by training telemetry and `families.clip`; fills `last_stats` after each forward
        self.last_stats: dict[str, float] = {}
        self.last_updates: UpdateRecord | None = None  # the updates of the last recorded forward
        self._clip_checked: tuple | None = None  # the clip setting whose first forward was checked (`_check_clip`)
        self._w0_norm: float | None = None  # ||W0|| at the last eager call, for a captured CUDA graph (clip_mode relative)
        self.config = config  # the one home of the settings: `convert` hands every layer of a model the same object
        self.cp_group = None  # a process group splitting sequences along time (context parallelism)
        weight = getattr(self, spec.down).weight
        d = weight.shape[0]
        self.ttt = TargetGenerator(d, d, config, dtype=weight.dtype, device=weight.device)

    # the settings, read from `config` (a change there reaches every layer of the model)
    chunk_size = property(lambda self: self.config.chunk_size)
    ttt_lr = property(lambda self: self.config.ttt_lr)
    target_source = property(lambda self: self.config.target_source)

    @property
    def clip_tau(self) -> float | None:
        return self.config.clip_tau

    @clip_tau.setter
    def clip_tau(self, value: float | None) -> None:
        """The old way to set clipping, one layer at a time; it now sets the model's one `TTTConfig`."""
        warnings.warn(
            "layer.clip_tau = ... sets the clipping of every layer sharing this layer's TTTConfig; use inplace_ttt.set_clip_tau(model, ...)",
            FutureWarning,
            stacklevel=2,
        )
        self.config.clip_tau = TTTConfig(clip_tau=value).clip_tau

    @property
    def down(self) -> nn.Module:
        return getattr(self, self.spec.down)

    def effective_clip_tau(self) -> float | None:
        """The absolute bound on ``||dW_i||_F`` the op applies: `clip_tau` itself, or for
        ``clip_mode: relative`` ``clip_tau ||W0||_F / eta`` (so that ``eta ||dW_i|| <= clip_tau ||W0||``)."""
        tau = self.config.clip_tau
        if tau is None or self.config.clip_mode == "absolute":
            return tau
        return tau * self.w0_norm() / self.ttt_lr

    def w0_norm(self) -> float:
        """``||W0||_F`` of the down projection as it is now (it trains, and the optimizer may change it
        without moving the tensor's version counter, so no cache can tell it is stale). Inside a
        captured CUDA graph, which cannot hold the host sync, the value of the last eager call."""
        w = self.down.weight
        if w.is_cuda and torch.cuda.is_current_stream_capturing():
            if self._w0_norm is None:
                raise RuntimeError("clip_mode relative reads ||W0|| on the host: run one step before capturing a CUDA graph")
            return self._w0_norm
        self._w0_norm = w.detach().to(state_dtype(w.dtype)).norm().item()
        return self._w0_norm

    def extra_repr(self) -> str:
        clip = f"clip_tau={self.clip_tau}" + (f" ({self.config.clip_mode})" if self.clip_tau is not None else "")
        return f"wraps={self.wrapped_type}, chunk_size={self.chunk_size}, ttt_lr={self.ttt_lr}, target_source={self.target_source}, {clip}"

    def forward(
        self,
        x: Tensor,
        context: TTTContext | None = None,
        *,
        position_ids: Tensor | None = None,
        target_source: Tensor | None = None,
        state: FastWeightState | None = None,
    ) -> Tensor:
        """`x` ``[B, T, d]`` → ``[B, T, d]``.

        context: what the model's forward says about these tokens (`TTTContext`: positions, their
            segments, token embeddings, the streaming state), built once per model forward by
            the model's family. A layer used on its own takes the same three as arguments:
        position_ids: ``[B, T]``, 0 starts a document, negative is padding (see `ops.segments`).
        target_source: ``[B, T, d]`` token embeddings when ``target_source="token_embeddings"``.
        state: streaming state; when given, `x` continues the sequences it holds (positions
            default to the next ones) and the state is updated in place.
        """
        if context is None:
            context = TTTContext(position_ids, target_source, (lambda _: state) if state is not None else None)
        elif position_ids is not None or target_source is not None or state is not None:
            raise TypeError("give a context or position_ids / target_source / state, not both")
        state = context.state(self.layer_idx)
        z = self.spec.hidden(self, x)
        if state is not None and self.cp_group is not None:  # at once, before any collective: streaming runs on one rank
            raise ValueError("streaming (a state) runs on one rank: clear cp_group (context parallelism) to generate")
        tau = self.effective_clip_tau()
        stats = {} if (self.record_stats and state is None) or self._clip_unchecked(tau, x.shape[1]) else None
        if self.cp_group is not None:
            fast = self._context_parallel(z, x, context.embeddings, context.positions, stats, tau)
        elif x.shape[1] == 0:  # no tokens: no update, no state change
            return self.down(z)
        elif state is None:
            src = self._source(x, context.embeddings)
            seg = context.segments(self.chunk_size, x.shape[0], x.shape[1], x.device)
            v = self.ttt(src, seg.seg_key).to(z.dtype)
            fast = inplace_ttt(z, v, None, self.ttt_lr, self.chunk_size, position_ids=context.positions, clip_tau=tau, stats=stats, segments=seg)
        else:
            return self._stream(z, self._source(x, context.embeddings), context.positions, state, tau, stats)
        if stats is not None:
            self._record(stats, tau)
        return self.down(z) + fast

    def _clip_unchecked(self, tau: float | None, n_tokens: int) -> bool:
        """Whether this forward should record its updates to check what clipping keeps: the first
        forward of several tokens after clipping is set or changed (one host sync per setting)."""
        return tau is not None and n_tokens > 1 and self._clip_checked != (self.config.clip_tau, self.config.clip_mode)

    def _check_clip(self) -> None:
        """Warn once per clip setting when clipping removes nearly all of the update."""
        record = self.last_updates
        if record is None or record.tau is None or not record.updates:
            return
        self._clip_checked = (self.config.clip_tau, self.config.clip_mode)
        message = record.warning()
        if message is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _context_parallel(
        self, z: Tensor, x: Tensor, target_source: Tensor | None, position_ids: Tensor | None, stats: dict | None, tau: float | None
    ) -> Tensor:
        """The fast term on this rank's slice of sequences split across `cp_group`: the convolution
        reads its neighbours' edge tokens, the op their carry (`ops.distributed`). A bad argument
        is raised on every rank (after the metadata exchange), so no rank waits for one that failed."""
        B, T, h = z.shape
        error, src = None, x
        try:
            src = self._source(x, target_source)
        except ValueError as e:
            error = str(e)
        shard = sequence_shard(
            self.cp_group,
            position_ids,
            B,
            T,
            self.chunk_size,
            widths=(src.shape[-1], h),
            dtype=z.dtype,
            device=z.device,
            settings=(self.ttt_lr, tau, False),
            halo=self.ttt.kernel // 2,
            error=error,
        )
        src_ext, key_ext, own = shard.with_halo(src)
        v = self.ttt(src_ext, key_ext)[:, own].to(z.dtype)
        return context_parallel_ttt(z, v, None, self.ttt_lr, self.chunk_size, group=self.cp_group, clip_tau=tau, stats=stats, shard=shard)

    def _record(self, stats: dict, tau: float | None) -> None:
        """Telemetry of the last forward: ``lr ||S|| / ||W0||``, the share of clipped chunk updates
        and the mean share of an update clipping kept (`clip_factor`, 1: untouched); the updates
        themselves in `last_updates`."""
        w0_norm = self.w0_norm()
        record = UpdateRecord(self.layer_idx, stats["update_norms"], stats["clip_factors"], tau, self.ttt_lr, w0_norm)
        self.last_updates = record
        self.last_stats = {
            "fast_ratio": self.ttt_lr * stats["fast_norm"] / max(w0_norm, 1e-30),
            "clipped_share": stats["clipped"] / stats["updates"] if stats["updates"] else 0.0,
        }
        if record.updates:
            self.last_stats["clip_factor"] = record.mean_factor()
        self._check_clip()

    def _source(self, x: Tensor, target_source: Tensor | None) -> Tensor:
        if self.target_source == "hidden_states":
            return x
        if target_source is None:
            raise ValueError("this TTT layer reads its target from token embeddings: pass target_source=[B, T, d] embeddings")
        if target_source.shape[:2] != x.shape[:2]:
            raise ValueError(f"target_source must be [B, T, ...] = {list(x.shape[:2])}; got {list(target_source.shape)}")
        return target_source

    # streaming -----------------------------------------------------------------------------

    def _stream(self, z: Tensor, src: Tensor, position_ids: Tensor | None, state: FastWeightState, tau: float | None, stats: dict | None) -> Tensor:
        """The layer's output for tokens that continue the sequences of `state` (updated in place)."""
        B, n, h = z.shape
        if not state.initialized:
            d = self.down.weight.shape[0]
            state.init(B, d, h, src.shape[-1], self.chunk_size, z.dtype, state_dtype(z.dtype), z.device)
        if state.batch_size != B:
            raise ValueError(f"the state holds {state.batch_size} sequences but the input has {B} rows")
        if position_ids is None:
            pos = state.last_pos[:, None] + 1 + torch.arange(n, device=z.device)
        else:
            pos = position_ids.to(device=z.device, dtype=torch.long)
        if n > 1:
            fast = prefill(z, src, pos, state, self.ttt, self.ttt_lr, self.chunk_size, tau, stats)
            if stats is not None:
                self._record(stats, tau)
            return self.down(z) + fast
        # a plain `nn.Linear` down projection runs as one product with W0 + lr S (the state keeps that
        # weight until it changes); any other module (LoRA-wrapped, quantized) as itself plus the fast term
        plain = type(self.down) is nn.Linear
        w0, bias = (self.down.weight, self.down.bias) if plain else (None, None)
        out = token_step(z[:, 0], src[:, 0], pos[:, 0], state, self.ttt, self.ttt_lr, self.chunk_size, tau, w0, bias)
        return (out if plain else self.down(z[:, 0]) + out)[:, None]

    def fixed_step(self, z: Tensor, src: Tensor, state: FixedStepState, active: Tensor) -> Tensor:
        """One token per row, CUDA-graph safe (`ops.recurrent.fixed_step`): the fast-weight term
        ``[B, d]`` of `z` ``[B, h]``, `state` moved on in place where `active` ``[B]``."""
        return fixed_step(
            z, src, state, active, self.ttt.taps(state.window_src.dtype), self.ttt.project, self.ttt_lr, self.chunk_size, self.effective_clip_tau()
        )
