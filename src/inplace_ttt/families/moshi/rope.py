"""YaRN for Moshi's rotary embedding, computed with transformers' YaRN formulas.

Moshi's `RotaryEmbedding` derives its frequencies from ``max_period`` on every call and has no
scaling. `YarnRotaryEmbedding` is a drop-in replacement holding YaRN's inverse frequencies
(float32) and attention factor (cos and sin are multiplied by it, as transformers does).
`yarn_parameters` follows `transformers.modeling_rope_utils._compute_yarn_parameters`
(the tests compare the two for several factors); it depends on torch only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

YARN_KEYS = ("rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate")


def check_rope_scaling(rope_scaling: dict) -> dict:
    """Validate a transformers-style YaRN dict (``{"rope_type": "yarn", "factor": 4.0,
    "original_max_position_embeddings": 3000, ...}``); returns a copy."""
    if not isinstance(rope_scaling, dict):
        raise ValueError(
            f"rope_scaling must be a dict like {{'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 3000}}; got {rope_scaling!r}"
        )
    unknown = sorted(set(rope_scaling) - set(YARN_KEYS))
    if unknown:
        raise ValueError(f"unknown rope_scaling keys {unknown}; valid keys: {list(YARN_KEYS)}")
    if rope_scaling.get("rope_type", "yarn") != "yarn":
        raise ValueError(f"rope_scaling.rope_type must be 'yarn' (the only scaling offered for Moshi); got {rope_scaling['rope_type']!r}")
    factor = rope_scaling.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 1:
        raise ValueError(f"rope_scaling.factor must be a number >= 1; got {factor!r}")
    original = rope_scaling.get("original_max_position_embeddings")
    if not isinstance(original, int) or isinstance(original, bool) or original < 1:
        raise ValueError(
            f"rope_scaling.original_max_position_embeddings must be an integer >= 1 (the pretraining context, e.g. 3000 steps for Moshi 7B); got {original!r}"
        )
    return {"rope_type": "yarn", **rope_scaling}


def yarn_parameters(
    head_dim: int,
    rope_theta: float,
    factor: float,
    original_max_position_embeddings: int,
    *,
    beta_fast: float | None = None,
    beta_slow: float | None = None,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    truncate: bool = True,
    **_: object,
) -> tuple[Tensor, float]:
    """YaRN's float32 inverse frequencies ``[head_dim // 2]`` and its cos/sin scale.

    Dimensions rotating more than `beta_fast` times over the original context keep their
    frequency, those rotating fewer than `beta_slow` times are divided by `factor`, with a
    linear ramp between; the attention factor defaults to ``0.1 ln(factor) + 1``.
    """
    beta_fast = beta_fast or 32
    beta_slow = beta_slow or 1

    def mscale_of(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(mscale_of(factor, mscale) / mscale_of(factor, mscale_all_dim))
        else:
            attention_factor = mscale_of(factor)

    def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times over the original context
        return head_dim * math.log(original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(rope_theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # share of the original (extrapolated) frequency
    base_freq = rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    inv_freq = (1.0 / (factor * base_freq)) * (1 - keep) + (1.0 / base_freq) * keep
    return inv_freq, float(attention_factor)


class YarnRotaryEmbedding(nn.Module):
    """Moshi's rotary embedding (same call, same layouts) with YaRN frequencies and scale."""

    def __init__(self, interleave: bool, inv_freq: Tensor, attention_factor: float, rope_scaling: dict):
        super().__init__()
        self.interleave = interleave
        self.attention_factor = attention_factor
        self.rope_scaling = dict(rope_scaling)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def extra_repr(self) -> str:
        return f"interleave={self.interleave}, attention_factor={self.attention_factor:.4f}, rope_scaling={self.rope_scaling}"

    def forward(self, q: Tensor, k: Tensor, offset: Tensor, time_before_heads: bool = False) -> tuple[Tensor, Tensor]:
        """`q`, `k` ``[B, H, T, D]`` (``[B, T, H, D]`` if `time_before_heads`), `offset` ``[B]`` or ``[1]``."""
        T = q.shape[1] if time_before_heads else q.shape[2]
        ts = offset.float().view(-1, 1) + torch.arange(T, device=q.device, dtype=torch.float32)
        ts = ts.view(ts.shape[0], T, 1, 1) if time_before_heads else ts.view(ts.shape[0], 1, T, 1)
        angles = ts * self.inv_freq.to(q.device)
        cos, sin = torch.cos(angles) * self.attention_factor, torch.sin(angles) * self.attention_factor
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        if self.interleave:  # [r0, i0, r1, i1, ...]
            re, im = x.unflatten(-1, (half, 2)).float().unbind(-1)
        else:  # [r..., i...]
            re, im = x.float().split(half, -1)
        out_re, out_im = re * cos - im * sin, re * sin + im * cos
        if self.interleave:
            return torch.stack([out_re, out_im], -1).flatten(-2).to(x.dtype)
        return torch.cat([out_re, out_im], -1).to(x.dtype)
