"""What every In-Place TTT op shares: input validation, the fast-weight sum's dtype, one chunk's
update and its clipping (forward and backward). Depends on torch only."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the fast-weight sum for inputs of `dtype`: never below float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_inputs(z, v, w0, lr, chunk_size, clip_tau, initial_state) -> None:
    if z.dim() != 3 or v.dim() != 3 or z.shape[:2] != v.shape[:2]:
        raise ValueError(f"z must be [B, T, h] and v [B, T, d] with the same B, T; got {list(z.shape)} and {list(v.shape)}")
    B, T, h = z.shape
    d = v.shape[-1]
    if v.dtype != z.dtype or (w0 is not None and w0.dtype != z.dtype):
        raise ValueError(f"z, v and w0 must share a dtype; got {z.dtype}, {v.dtype}, {None if w0 is None else w0.dtype}")
    if w0 is not None and tuple(w0.shape) != (d, h):
        raise ValueError(f"w0 must be [d, h] = {[d, h]} (the nn.Linear weight of the down projection); got {list(w0.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    if not math.isfinite(float(lr)):
        raise ValueError(f"lr must be finite; got {lr!r}")
    if clip_tau is not None and not (math.isfinite(clip_tau) and clip_tau > 0):
        raise ValueError(f"clip_tau must be None or a finite number > 0; got {clip_tau!r}")
    if initial_state is not None and tuple(initial_state.shape) != (B, d, h):
        raise ValueError(f"initial_state must be [B, d, h] = {[B, d, h]}; got {list(initial_state.shape)}")


def update_operands(vs: Tensor, zs: Tensor) -> tuple[Tensor, Tensor]:
    """fp16 chunk updates are formed in fp32: a sum over a long chunk overflows fp16's range."""
    if zs.dtype == torch.float16:
        return vs.float(), zs.float()
    return vs, zs


def zero_rows(t: Tensor, rows: Tensor) -> None:
    """Zero `t[b]` where `rows[b]`, in place; unlike a multiply by 0 this also clears inf/NaN."""
    t.masked_fill_(rows[:, None, None], 0)


def chunk_update(v: Tensor, z: Tensor, clip_tau: float | None = None) -> Tensor:
    """One chunk's update ``v^T z`` per row (`[B, C, d]`, `[B, C, h]` -> `[B, d, h]`) in the
    state dtype, clipped to norm `clip_tau`: what the scan adds, for callers that step by hand."""
    v, z = update_operands(v, z)
    dW = (v.mT @ z).to(state_dtype(z.dtype))
    if clip_tau is not None:
        dW *= clip_factor(dW, clip_tau)[:, None, None]
    return dW


def update_norm(dW: Tensor) -> Tensor:
    """``||dW||_F`` per row (`[B, d, h]` -> `[B]`), in float32 or wider."""
    return dW.flatten(1).to(state_dtype(dW.dtype)).norm(dim=1)


def clip_factor(dW: Tensor, tau: float) -> Tensor:
    """`min(1, tau / ||dW||_F)` per row, in float32 or wider; 1 for a zero update."""
    return factor_of_norm(update_norm(dW), tau)


def factor_of_norm(norm: Tensor, tau: float) -> Tensor:
    """The clip factor `min(1, tau / norm)` of updates of Frobenius norm `norm`: the share of each
    update that clipping at `tau` keeps (1: untouched)."""
    return (tau / norm).clamp(max=1.0)


def clip_backward(Q: Tensor, dW: Tensor, c: Tensor) -> Tensor:
    """Gradient through ``y = c(x) x`` with ``c = min(1, tau/|x|)``: ``c (Q - <Q,x>/|x|^2 x)`` where clipped."""
    clipped = c < 1
    sq = dW.flatten(1).pow(2).sum(1).clamp_min(torch.finfo(dW.dtype).tiny)
    alpha = torch.where(clipped, (Q * dW).flatten(1).sum(1) / sq, 0.0)
    return c[:, None, None] * (Q - alpha[:, None, None] * dW)
