"""Depthwise convolution over time that stays inside each chunk of each document.

``y_t = sum_k w[:, k] * x_{t+k-r}`` over taps whose token is in ``t``'s segment (zero padding at
chunk and document edges; it may look ahead inside the chunk). A custom backward keeps only `x`
and the segment keys: autograd through K masked shifts would save K copies of `x`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def chunk_conv(x: Tensor, weight: Tensor, seg_key: Tensor) -> Tensor:
    """`x` `[B, T, F]`, `weight` `[F, K]` (K odd, centred), `seg_key` `[B, T]` from `find_segments`."""
    if weight.dim() != 2 or weight.shape[0] != x.shape[-1] or weight.shape[1] % 2 == 0:
        raise ValueError(f"weight must be [F, K] with F = {x.shape[-1]} and K odd; got {list(weight.shape)}")
    return _ChunkConv.apply(x, weight, seg_key)


def _taps(seg_key: Tensor, K: int):
    """Yield `(k, offset, lo, hi, mask)`: for tap `k`, output columns `lo:hi` read `offset` columns away where `mask`."""
    T = seg_key.shape[1]
    r = K // 2
    for k in range(K):
        o = k - r
        lo, hi = max(0, -o), min(T, T - o)
        if lo >= hi:
            continue
        mask = seg_key[:, lo:hi] == seg_key[:, lo + o : hi + o]
        yield k, o, lo, hi, mask[..., None]


def _conv(x: Tensor, weight: Tensor, seg_key: Tensor) -> Tensor:
    y = torch.zeros_like(x)
    for k, o, lo, hi, mask in _taps(seg_key, weight.shape[1]):
        y[:, lo:hi] += torch.where(mask, x[:, lo + o : hi + o], 0) * weight[:, k]  # where, not *: padding may hold NaN
    return y


class _ChunkConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, seg_key):
        ctx.save_for_backward(x, weight, seg_key)
        with torch.autocast(x.device.type, enabled=False):
            return _conv(x, weight.to(x.dtype), seg_key)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight, seg_key = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            return _ChunkConv._grads(ctx, g, x, weight, seg_key)

    @staticmethod
    def _grads(ctx, g, x, weight, seg_key):
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # the adjoint of a masked shift by o is a masked shift by -o: the flipped kernel
            grad_x = _conv(g, weight.flip(1).to(g.dtype), seg_key)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight)
            for k, o, lo, hi, mask in _taps(seg_key, weight.shape[1]):
                grad_w[:, k] = (g[:, lo:hi] * torch.where(mask, x[:, lo + o : hi + o], 0)).sum((0, 1), dtype=grad_w.dtype)
        return grad_x, grad_w, None
