"""The In-Place TTT operator as a plain loop over tokens: the definition the fast op is held to.

Slow on purpose: one token at a time, one outer product per token, no batching tricks. It is
differentiable by autograd, so it also checks the fast op's hand-written backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import check_inputs, state_dtype


def inplace_ttt_reference(
    z: Tensor,
    v: Tensor,
    w0: Tensor | None,
    lr: float,
    chunk_size: int,
    *,
    position_ids: Tensor | None = None,
    clip_tau: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as `inplace_ttt`; padding outputs are zero."""
    check_inputs(z, v, w0, lr, chunk_size, clip_tau, initial_state)
    B, T, h = z.shape
    d = v.shape[-1]
    sdt = state_dtype(z.dtype)

    def clip(dW: Tensor) -> Tensor:
        norm = dW.norm()
        if clip_tau is not None and norm > clip_tau:
            return dW * (clip_tau / norm)
        return dW

    rows, finals = [], []
    for b in range(B):
        S = initial_state[b].to(sdt) if initial_state is not None else z.new_zeros(d, h, dtype=sdt)
        pending = z.new_zeros(d, h, dtype=sdt)  # update of the chunk being read
        chunk = prev = None
        outs = []
        for t in range(T):
            p = t if position_ids is None else int(position_ids[b, t])
            if p < 0:
                outs.append(z.new_zeros(d, dtype=sdt))
                continue
            new_doc = position_ids is not None and (p == 0 or (prev is not None and p != prev + 1))
            if new_doc:
                S = z.new_zeros(d, h, dtype=sdt)
                pending = z.new_zeros(d, h, dtype=sdt)
            elif chunk is not None and p // chunk_size != chunk:
                S = S + clip(pending)
                pending = z.new_zeros(d, h, dtype=sdt)
            chunk, prev = p // chunk_size, p
            W = lr * S if w0 is None else w0.to(sdt) + lr * S
            outs.append(W @ z[b, t].to(sdt))
            pending = pending + torch.outer(v[b, t].to(sdt), z[b, t].to(sdt))
        if prev is not None and (prev + 1) % chunk_size == 0:
            S = S + clip(pending)
        rows.append(torch.stack(outs) if outs else z.new_zeros(0, d, dtype=sdt))
        finals.append(S)
    out = torch.stack(rows).to(z.dtype)
    return (out, torch.stack(finals)) if output_final_state else out
