"""Context parallelism: one batch of sequences split along time across a process group.

Each rank holds a contiguous slice of the same rows. Chunk updates are associative, so a rank
runs the ordinary op on its slice (from a zero state) and then corrects its outputs with the
carry of the ranks before it: ``S`` (the clipped complete-chunk updates of the document its
slice continues) and ``P`` (the unclipped partial update of a chunk that straddles the rank
boundary: clipping needs the norm of the whole chunk). Both are prefix sums over ranks that
restart at document starts, so each is one all_gather of one ``[B, d, h]`` piece per rank (``P``
only when some chunk straddles a boundary); backward runs the same scans in reverse, one
all_gather each: a rank's state receives the gradient of every later token of its document,
and each rank's ``w0`` gradient is its own share (summed by data-parallel reduction).

The convolution of the layer's target reads ``kernel // 2`` tokens of each neighbouring rank
(`SequenceShard.with_halo`). Each call begins with a small metadata exchange (two all_gathers,
`sequence_shard`) that checks shapes, dtypes and settings on every rank, so bad input raises the
same error everywhere instead of hanging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from .chunk import chunk_inplace_ttt
from .common import check_inputs, chunk_update, clip_backward, clip_factor
from .segments import Segments, find_segments

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_AGREED = ("batch size B", "model width d", "hidden width h", "dtype", "position_ids given", "halo", "chunk_size", "lr", "clip_tau", "w0 given")


@dataclass
class SequenceShard:
    """This rank's place in sequences split across `group`, from one metadata exchange.

    `positions` are the global positions of the local slice (generated from the lengths of the
    earlier ranks when the caller gave none). Per rank `k` and row `b` (``[R, B]`` bool):
    `reset` (a document starts in the slice), `done` (the chunk the slice begins in ends inside
    it), `cont` (the first token continues the previous rank's document); `straddle`: some chunk
    crosses a rank boundary, so partial updates must travel.
    """

    group: object
    rank: int
    world: int
    chunk_size: int
    segments: Segments  # of the local slice, at its global positions
    reset: Tensor
    done: Tensor
    cont: Tensor
    straddle: bool
    halo_positions: tuple[Tensor, Tensor]  # positions of the previous rank's tail, the next rank's head

    def with_halo(self, x: Tensor) -> tuple[Tensor, Tensor, slice]:
        """`x` `[B, T, F]` with ``halo`` tokens of each neighbour on either side, the segment keys of
        that extended slice (chunks and documents as in the whole sequence) and the slice of its
        own tokens: a convolution that stays inside chunks then sees what it would see unsplit.
        Differentiable: the gradient of a neighbour's tokens goes back to that neighbour."""
        before, after = self.halo_positions
        r = before.shape[1]
        edges = _Gather.apply(torch.cat([x[:, :r], x[:, x.shape[1] - r :]], 1), self.group)  # [R, B, 2r, F]
        zeros = x.new_zeros(x.shape[0], r, x.shape[-1])
        left = edges[self.rank - 1, :, r:] if self.rank > 0 else zeros
        right = edges[self.rank + 1, :, :r] if self.rank + 1 < self.world else zeros
        pos = torch.cat([before, self.positions, after], 1)
        seg = find_segments(pos, x.shape[0], pos.shape[1], self.chunk_size, x.device)
        return torch.cat([left, x, right], 1), seg.seg_key, slice(r, r + x.shape[1])

    @property
    def positions(self) -> Tensor:
        return self.segments.positions


def sequence_shard(
    group,
    position_ids: Tensor | None,
    batch: int,
    length: int,
    chunk_size: int,
    *,
    widths: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    settings: tuple[float, float | None, bool] = (0.0, None, False),
    halo: int = 0,
    error: str | None = None,
) -> SequenceShard:
    """Exchange and check what every rank holds; raises the same error on every rank.

    `widths` ``(d, h)``, `dtype` and `settings` ``(lr, clip_tau, w0 given)`` must agree across
    ranks, as must `batch` and whether `position_ids` are given; lengths may differ. `error`: a
    local problem already found (raised on this rank, reported on the others).
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    seg = None
    if error is None and position_ids is not None and length > 0:  # an empty slice is refused below, on every rank
        try:
            seg = find_segments(position_ids, batch, length, chunk_size, device)
        except ValueError as e:
            error = str(e)
    lr, tau, has_w0 = settings
    code = _DTYPES.index(dtype) if dtype in _DTYPES else -1
    header = [batch, *widths, code, position_ids is not None, halo, chunk_size, float(lr), -1.0 if tau is None else float(tau), has_w0]
    table = _all_gather(torch.tensor([error is not None, length, *header], dtype=torch.float64, device=device), group)
    if error is not None:
        raise ValueError(error)
    bad = table[:, 0].nonzero()[:, 0].tolist()
    if bad:
        raise ValueError(f"context-parallel rank(s) {bad} got invalid input (see the error raised there)")
    for i, name in enumerate(_AGREED):
        column = table[:, 2 + i]
        if bool((column != column[0]).any()):
            shown = [_DTYPES[int(c)] if name == "dtype" and c >= 0 else c.item() for c in column]
            raise ValueError(
                f"context-parallel ranks disagree on {name}: {shown} (rank order); every rank must hold the same "
                f"rows, widths and settings, only the sequence is split"
            )
    lengths = table[:, 1].long()
    least = max(halo, 1)  # the convolution reads `halo` tokens of each neighbour
    if bool((lengths < least).any()):
        raise ValueError(f"every context-parallel rank must hold at least {least} token(s) of the sequence; lengths {lengths.tolist()}")
    if position_ids is None:
        offset = int(lengths[:rank].sum())
        pos = torch.arange(offset, offset + length, device=device).expand(batch, length)
        seg = find_segments(pos, batch, length, chunk_size, device)
    rows = _all_gather(_row_summary(seg, halo), group)  # [R, B, 6 + 2 halo]
    return _derive(group, rank, world, seg, rows, lengths, chunk_size, halo)


def _row_summary(seg, halo: int) -> Tensor:
    """Per row: first/last position and column of its tokens (-1 if none), whether a document starts
    after its first token, its number of segments, and the positions of its first and last `halo` columns."""
    B, T = seg.shape
    cols = torch.arange(T, device=seg.valid.device)
    has = seg.valid.any(1)
    first_col = torch.where(has, seg.valid.long().argmax(1), -1)
    first_pos = torch.where(has, seg.positions.gather(1, first_col.clamp(min=0)[:, None])[:, 0], -1)
    last_col, last_pos = seg.last_token()
    inner_start = (seg.doc_start & (cols[None] != first_col[:, None])).any(1)
    n_seg = seg.seg_start.sum(1)
    edges = torch.cat([seg.positions[:, :halo], seg.positions[:, T - halo :]], 1) if halo else seg.positions[:, :0]
    return torch.cat([torch.stack([first_pos, last_pos, first_col, last_col, inner_start.long(), n_seg], 1), edges], 1)


def _derive(group, rank, world, seg, rows, lengths, C, halo) -> SequenceShard:
    """The whole sequence's structure at the rank boundaries, identical on every rank."""
    first, last, first_col, last_col, inner, n_seg = rows[..., :6].unbind(-1)  # each [R, B]
    has = first >= 0
    prev_last = torch.full_like(first[0], -1)  # last position before rank k's slice
    gap = torch.zeros_like(has[0])  # padding between that token and rank k's slice
    starts, cont, straddle = [], [], []
    for k in range(world):
        s = has[k] & ((prev_last < 0) | (first[k] == 0) | (first[k] != prev_last + 1))
        c = has[k] & ~s
        same_chunk = c & (first[k] // C == prev_last // C)
        if bool((same_chunk & (gap | (first_col[k] != 0))).any()):
            b = int((same_chunk & (gap | (first_col[k] != 0))).nonzero()[0])
            raise ValueError(
                f"padding inside a chunk of a document (row {b}, at the start of context-parallel rank {k}): put padding "
                f"at the start or end of a row or between documents, never between tokens of one document"
            )
        starts.append(s), cont.append(c), straddle.append(same_chunk)
        gap = torch.where(has[k], last_col[k] != lengths[k] - 1, gap | (lengths[k] > 0))
        prev_last = torch.where(has[k], last[k], prev_last)
    starts, cont = torch.stack(starts), torch.stack(cont)
    done = has & ((n_seg > 1) | ((last + 1) % C == 0))
    before = rows[rank - 1, :, 6 + halo :] if rank > 0 else torch.full_like(rows[0, :, :halo], -1)
    after = rows[rank + 1, :, 6 : 6 + halo] if rank + 1 < world else torch.full_like(rows[0, :, :halo], -1)
    return SequenceShard(group, rank, world, C, seg, starts | (inner > 0), done, cont, bool(torch.stack(straddle).any()), (before, after))


def context_parallel_ttt(
    z: Tensor,
    v: Tensor,
    w0: Tensor | None,
    lr: float,
    chunk_size: int,
    *,
    group,
    position_ids: Tensor | None = None,
    clip_tau: float | None = None,
    stats: dict | None = None,
    shard: SequenceShard | None = None,
    single_process_only: bool = False,
) -> Tensor:
    """`inplace_ttt` on this rank's slice of sequences split along time across `group`.

    `position_ids` are the slice's global positions; without them the rows are single documents
    and each rank's positions start after the tokens of the ranks before it. `shard`: the
    metadata exchange already done by the caller (the layer shares it with its convolution).
    `stats` describe this rank's updates only. `single_process_only`: the caller asked for an
    option this path lacks (an initial or final state), reported on every rank.
    """
    if shard is None:
        error = None
        try:
            check_inputs(z, v, w0, lr, chunk_size, clip_tau, None)
        except ValueError as e:
            error = str(e)
        if single_process_only:
            error = "initial_state and output_final_state are not supported with a process group (they belong to streaming, which runs on one rank)"
        B, T, h = z.shape if z.dim() == 3 else (-1, -1, -1)
        d = v.shape[-1] if v.dim() == 3 else -1
        shard = sequence_shard(
            group,
            position_ids,
            B,
            T,
            chunk_size,
            widths=(d, h),
            dtype=z.dtype,
            device=z.device,
            settings=(lr, clip_tau, w0 is not None),
            error=error,
        )
    out, final = chunk_inplace_ttt(z, v, w0, lr, chunk_size, position_ids=shard.positions, clip_tau=clip_tau, output_final_state=True, stats=stats)
    pieces = [final]
    seg = shard.segments
    if shard.straddle:  # the partial updates of the first and the unfinished last chunk
        last = seg.seg_start.sum(1, keepdim=True) - 1
        open_tail = seg.ends_mid_chunk()[:, None]
        with torch.autocast(z.device.type, enabled=False):
            pieces += [_partial(v, z, seg.valid & (seg.seg_index == 0)), _partial(v, z, seg.valid & (seg.seg_index == last) & open_tail)]
    first_doc = seg.valid & (torch.cumsum(seg.doc_start & (seg.seg_index > 0), 1) == 0) & shard.cont[shard.rank][:, None]
    head = first_doc & (seg.seg_index == 0)
    return _Carry.apply(out, z, shard, first_doc, head, float(lr), clip_tau, *pieces)


def _partial(v: Tensor, z: Tensor, mask: Tensor) -> Tensor:
    """The unclipped update ``v^T z`` of the tokens in `mask` `[B, T]` (at most a chunk per row), per
    row (state dtype)."""
    lo, hi = _span(mask)
    m = mask[:, lo:hi, None]
    return chunk_update(torch.where(m, v[:, lo:hi], 0), torch.where(m, z[:, lo:hi], 0))


def _clip(x: Tensor, tau: float | None) -> Tensor:
    return x if tau is None else x * clip_factor(x, tau)[:, None, None]


def _clip_grad(g: Tensor, x: Tensor, tau: float | None) -> Tensor:
    return g if tau is None else clip_backward(g, x, clip_factor(x, tau))


def _scan(pieces: Tensor, carry: Tensor, upto: int) -> Tensor:
    """``acc = pieces[k] + carry[k] * acc`` over ranks ``k < upto`` (`carry` ``[R, B]`` bool): a
    prefix sum that restarts where `carry` is False."""
    acc = torch.zeros_like(pieces[0])
    for k in range(upto):
        acc = pieces[k] + torch.where(carry[k][:, None, None], acc, 0)
    return acc


def _suffix(pieces: Tensor, carry: Tensor, after: int) -> Tensor:
    """The adjoint of `_scan`: the gradient of rank ``after``'s piece, given every rank's gradient
    of its scan result in `pieces`: ``sum over r > after`` of ``pieces[r]`` while ranks in between carry."""
    acc = torch.zeros_like(pieces[0])
    for k in reversed(range(after + 1, len(pieces))):
        acc = pieces[k] + torch.where(carry[k][:, None, None], acc, 0)
    return acc


class _Carry(torch.autograd.Function):
    """Local outputs plus the carry of the earlier ranks.

    Two prefix scans over ranks, each one all_gather of a ``[B, d, h]`` piece per rank: (1) where
    chunks straddle rank boundaries, the partial update ``P`` of the chunk this slice begins in
    (the tails of the ranks before, summed while a rank leaves its chunk open); this rank then adds
    ``jump = clip(P + H) - clip(H)`` to its own total, what its first chunk adds beyond the local
    op once complete; (2) the state ``S``: the totals of the ranks since the last document start.
    Outputs: ``+ lr z S^T`` on the tokens of the document the slice continues, ``+ lr z (S + jump)^T``
    instead on those after its first chunk. Backward runs both scans in reverse (one all_gather each).
    """

    @staticmethod
    def forward(ctx, out, z, shard, first_doc, head, lr, tau, final, *partials):
        k = shard.rank
        through = ~shard.reset
        with torch.autocast(z.device.type, enabled=False):
            jump = P = H = None
            total = final
            if partials:  # (own head, own tail)
                H, tail = partials
                P = _scan(_all_gather(tail, shard.group), through & ~shard.done, k)
                jump = _clip(P + H, tau) - _clip(H, tau)
                total = final + torch.where((through[k] & shard.done[k])[:, None, None], jump, 0)
            S = _scan(_all_gather(total, shard.group), through, k)
            if jump is None:
                _add_fast_term(out, z, first_doc, (lr * S).to(z.dtype))
            else:  # the first chunk reads S, the rest S + jump: disjoint spans, one matmul's work
                _add_fast_term(out, z, first_doc & head, (lr * S).to(z.dtype))
                _add_fast_term(out, z, first_doc & ~head, (lr * (S + jump)).to(z.dtype))
        ctx.mark_dirty(out)
        ctx.save_for_backward(z, first_doc, head, S, P, H)
        ctx.shard, ctx.lr, ctx.tau = shard, lr, tau
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        z, first_doc, head, S, P, H = ctx.saved_tensors
        shard, lr, tau = ctx.shard, ctx.lr, ctx.tau
        k = shard.rank
        through = ~shard.reset
        with torch.autocast(z.device.type, enabled=False):
            jump = None if P is None else _clip(P + H, tau) - _clip(H, tau)
            grad_z = torch.zeros_like(z) if ctx.needs_input_grad[1] else None
            if jump is None:
                g_S = _fast_term_backward(grad_z, g, z, first_doc, S, lr)
            else:
                g_jump = _fast_term_backward(grad_z, g, z, first_doc & ~head, S + jump, lr)
                g_S = _fast_term_backward(grad_z, g, z, first_doc & head, S, lr) + g_jump
            g_total = _suffix(_all_gather(g_S, shard.group), through, k)
            if jump is None:
                return g, grad_z, None, None, None, None, None, g_total
            g_jump += torch.where((through[k] & shard.done[k])[:, None, None], g_total, 0)
            g_P = _clip_grad(g_jump, P + H, tau)
            g_H = g_P - _clip_grad(g_jump, H, tau)
            g_tail = _suffix(_all_gather(g_P, shard.group), through & ~shard.done, k)
        return g, grad_z, None, None, None, None, None, g_total, g_H, g_tail


def _add_fast_term(out: Tensor, z: Tensor, mask: Tensor, W: Tensor) -> None:
    """``out += z W^T`` on the tokens in `mask` `[B, T]` (`W` ``[B, d, h]``), in place."""
    lo, hi = _span(mask)
    if hi == lo:
        return
    if bool(mask[:, lo:hi].all()):  # one document over the span: no masking copies
        out[:, lo:hi].baddbmm_(z[:, lo:hi], W.mT)
    else:
        out[:, lo:hi] += torch.where(mask[:, lo:hi, None], z[:, lo:hi] @ W.mT, 0)


def _fast_term_backward(grad_z: Tensor | None, g: Tensor, z: Tensor, mask: Tensor, W: Tensor, lr: float) -> Tensor:
    """Backward of `_add_fast_term` with ``lr W``: adds into `grad_z` (if given), returns dL/dW."""
    lo, hi = _span(mask)
    if hi == lo:
        return torch.zeros_like(W)
    gm = g[:, lo:hi] if bool(mask[:, lo:hi].all()) else torch.where(mask[:, lo:hi, None], g[:, lo:hi], 0)
    if grad_z is not None:
        grad_z[:, lo:hi].baddbmm_(gm, W.to(z.dtype), alpha=lr)
    return lr * chunk_update(gm, z[:, lo:hi])


def _span(mask: Tensor) -> tuple[int, int]:
    """The column range `[lo, hi)` holding every `True` of `mask` `[B, T]` (empty if none)."""
    cols = mask.any(0).nonzero()[:, 0]
    return (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)


def _all_gather(t: Tensor, group) -> Tensor:
    """`[R, ...]`: `t` from every rank of `group`, in rank order."""
    out = t.new_empty(dist.get_world_size(group), *t.shape)
    dist.all_gather(list(out.unbind(0)), t.contiguous(), group=group)
    return out


class _Gather(torch.autograd.Function):
    """Differentiable all_gather: the gradient of a rank's piece is the sum over the ranks that read it."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        return _all_gather(t, group)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        g = g.contiguous()
        dist.all_reduce(g, group=ctx.group)
        return g[dist.get_rank(ctx.group)], None


__all__ = ["SequenceShard", "context_parallel_ttt", "sequence_shard"]
