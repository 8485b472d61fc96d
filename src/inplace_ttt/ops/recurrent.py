"""Streaming In-Place TTT: tokens read into a state that carries the fast weight between calls.

Three ops, each giving the chunked op's outputs for tokens that continue the sequences of a state
(`tests/ops/test_recurrent.py` holds them to `inplace_ttt_reference`, token by token):

- `prefill`: several tokens per row (`FastWeightState`): the chunked op over each row's unfinished
  chunk followed by the new tokens;
- `token_step`: one token per row (`FastWeightState`): the output with the current fast weight, then
  the chunk's update where the token ends its chunk;
- `fixed_step`: one token per row with fixed shapes, no host sync and no data-dependent branch
  (`FixedStepState`), so that a CUDA graph can replay it.

The target of a chunk needs the whole chunk (its convolution looks ahead inside it), so the ops take
the layer's target function, `targets(src [B, n, F], seg_key [B, n]) -> v [B, n, d]` (the
chunk-local convolution and projection; keys as `ops.segments` makes them), and call it on a chunk's
buffered tokens once the chunk is complete; `fixed_step` takes the convolution's taps and the
projection instead, and forms each token's target as soon as its look-ahead has arrived.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .chunk import chunk_inplace_ttt
from .common import chunk_update, clip_factor
from .segments import find_segments
from .state import FastWeightState, FixedStepState

Targets = Callable[[Tensor, Tensor], Tensor]


def restarts(state: FastWeightState, first_pos: Tensor, has_token: Tensor) -> Tensor:
    """`[B]`: rows whose next token does not continue their last one (a new document: position 0
    or a jump). A row that holds nothing yet (last position -1) restarts as a no-op."""
    return has_token & (first_pos != state.last_pos + 1)


def token_step(
    z: Tensor,
    src: Tensor,
    pos: Tensor,
    state: FastWeightState,
    targets: Targets,
    lr: float,
    chunk_size: int,
    clip_tau: float | None = None,
    w0: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """One token per row (`z` ``[B, h]``, `src` ``[B, F]``, `pos` ``[B]``, negative: no token):
    the fast-weight term ``lr z S^T`` ``[B, d]``, or with `w0` (and `bias`) the whole down projection
    ``z (W0 + lr S)^T + b`` as one product per row, as the unconverted model reads one ``[d, h]``
    matrix. Then `state` moves on in place."""
    valid = pos >= 0
    restart = restarts(state, pos, valid)
    done = valid & (pos % chunk_size == chunk_size - 1)
    any_restart, any_done, all_valid = torch.stack([restart.any(), done.any(), valid.all()]).tolist()  # one host sync
    if any_restart:
        state.restart_rows(restart)
    out = state.apply(z, lr, w0, bias)
    state.write_token(src, z, pos, None if all_valid else valid)
    if any_done:
        rows = done.nonzero()[:, 0]
        keep = state.buf_valid[rows][..., None]  # columns of the chunk that hold its tokens
        cols = torch.arange(chunk_size, device=z.device)
        seg_key = torch.where(keep[..., 0], 0, -1 - cols)  # one segment; empty columns match nothing
        v = torch.where(keep, targets(state.buf_src[rows], seg_key), 0).to(z.dtype)
        state.add_to_rows(rows, chunk_update(v, torch.where(keep, state.buf_z[rows], 0), clip_tau))
        state.buf_valid[rows] = False
    return out


def prefill(
    z: Tensor,
    src: Tensor,
    pos: Tensor,
    state: FastWeightState,
    targets: Targets,
    lr: float,
    chunk_size: int,
    clip_tau: float | None = None,
    stats: dict | None = None,
) -> Tensor:
    """Several tokens per row (`z` ``[B, n, h]``, `src` ``[B, n, F]``, `pos` ``[B, n]``, negative:
    padding): the fast-weight term ``[B, n, d]``; `state` moves on in place. `stats`: as for
    `inplace_ttt`, over the updates this call folds in."""
    valid = pos >= 0
    has_token = valid.any(1)
    first = pos.gather(1, valid.long().argmax(1, keepdim=True))[:, 0]
    restart = restarts(state, first, has_token)
    if bool(restart.any()):
        state.restart_rows(restart)
    b_src, b_z, b_pos = state.buffered()
    m = b_pos.shape[1]
    all_src, all_z, all_pos = torch.cat([b_src, src], 1), torch.cat([b_z, z], 1), torch.cat([b_pos, pos], 1)
    # padding after buffered tokens (a left-padded continuation) would split their chunk:
    # move each row's padding to its front, keeping the tokens in order
    order = None
    present = all_pos >= 0
    if bool((present[:, :-1] & ~present[:, 1:]).any()):
        order = torch.argsort(present.to(torch.int8), dim=1, stable=True)
        all_src, all_z, all_pos = (_take(t, order) for t in (all_src, all_z, all_pos))
    seg = find_segments(all_pos, z.shape[0], all_pos.shape[1], chunk_size, z.device)
    v = targets(all_src, seg.seg_key).to(z.dtype)
    out, state.fast_sum = chunk_inplace_ttt(
        all_z, v, None, lr, chunk_size, position_ids=all_pos, clip_tau=clip_tau, initial_state=state.fast_sum, output_final_state=True, stats=stats
    )
    # keep the tokens of each row's last segment if its chunk is unfinished
    last_col, last_pos = seg.last_token()
    last_seg = seg.seg_index.gather(1, last_col.clamp(min=0)[:, None])
    state.store(all_src, all_z, all_pos, seg.valid & (seg.seg_index == last_seg) & seg.ends_mid_chunk()[:, None])
    state.last_pos = torch.where(has_token, last_pos, state.last_pos)
    if order is not None:
        out = torch.empty_like(out).scatter_(1, order[..., None].expand_as(out), out)
    return out[:, m:]


def fixed_step(
    z: Tensor,
    src: Tensor,
    state: FixedStepState,
    active: Tensor,
    taps: Tensor,
    project: Callable[[Tensor], Tensor],
    lr: float,
    chunk_size: int,
    clip_tau: float | None = None,
) -> Tensor:
    """One token per row, CUDA-graph safe: the fast-weight term ``lr z S^T`` (`z` ``[B, h]``, `src`
    ``[B, F]`` -> ``[B, d]``), then `state` moves on in place where `active` ``[B]``. `taps`: the
    target convolution's ``[F, kernel]`` weight; `project`: ``W_target`` as a function.

    The same updates as the chunked op, formed token by token (see `FixedStepState`)."""
    r, C = state.radius, chunk_size
    pos = state.next_pos
    S = state.fast_sum
    out = ((z[:, None].to(S.dtype) @ S.mT)[:, 0] * lr).to(z.dtype)
    win_src = torch.cat([state.window_src[:, 1:], src[:, None].to(state.window_src.dtype)], 1)
    win_pos = torch.cat([state.window_pos[:, 1:], pos[:, None]], 1)
    win_z = torch.cat([state.window_z[:, 1:], z[:, None].to(state.window_z.dtype)], 1)
    # targets of the window's last r+1 tokens: tap k of token i reads window column i + k,
    # kept where it holds a token of the same chunk (columns past the newest are empty)
    chunk = torch.where(win_pos >= 0, win_pos.div(C, rounding_mode="floor"), -1)
    B, K, F_ = win_src.shape
    taps_src = torch.cat([win_src, win_src.new_zeros(B, r, F_)], 1).unfold(1, K, 1)  # [B, r+1, F, K]
    taps_chunk = torch.cat([chunk, chunk.new_full((B, r), -1)], 1).unfold(1, K, 1)  # [B, r+1, K]
    own_chunk = chunk[:, r:]  # [B, r+1]
    same = (taps_chunk == own_chunk[..., None]) & (own_chunk[..., None] >= 0)
    conv = (torch.where(same[:, :, None], taps_src, 0) * taps.to(win_src.dtype)).sum(-1)
    v = project(conv).to(z.dtype)  # [B, r+1, d]
    # token t-r is final now; at a chunk's last token the r after it are too
    ends_chunk = pos % C == C - 1
    first = torch.arange(r + 1, device=z.device) == 0
    final = (own_chunk == pos.div(C, rounding_mode="floor")[:, None]) & (first | ends_chunk[:, None]) & active[:, None]
    v = torch.where(final[..., None], v, 0)
    state.pending.baddbmm_(v.mT.to(S.dtype), win_z.to(S.dtype))
    fold = ends_chunk & active
    update = state.pending
    if clip_tau is not None:
        update = update * clip_factor(update, clip_tau)[:, None, None]
    S.add_(torch.where(fold[:, None, None], update, 0))
    state.pending.masked_fill_(fold[:, None, None], 0)
    state.updates.add_(fold.long())
    state.window_src.copy_(torch.where(active[:, None, None], win_src, state.window_src))
    state.window_pos.copy_(torch.where(active[:, None], win_pos, state.window_pos))
    state.window_z.copy_(torch.where(active[:, None, None], win_z, state.window_z))
    state.next_pos.add_(active.long())
    return out


def _take(t: Tensor, order: Tensor) -> Tensor:
    """`t[b, order[b]]` along dim 1 for `[B, T]` or `[B, T, F]` tensors."""
    index = order if t.dim() == 2 else order[..., None].expand(-1, -1, t.shape[-1])
    return t.gather(1, index)
