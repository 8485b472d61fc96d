"""The fast In-Place TTT operator: a chunk scan with a hand-written backward.

Forward, slot by slot (see `layout.py`): ``out_s = z_s (w0 + lr S_s)^T`` then
``S_{s+1} = S_s + c_s V_s^T z_s`` (``c_s`` the clip factor), with ``S`` reset at documents.
Backward runs the same scan forward once more to rebuild each ``S_s`` (adding ``G_s W_s`` to
``dz``) and then a reverse scan carrying ``R = dL/dS``, which gives ``dV_s = z_s Q_s^T`` and
``dz_s += V_s Q_s`` with ``Q_s = dL/d(c_s dW_s)``. Each scan holds a few ``[B, d, h]`` tensors;
nothing grows with the number of chunks, unlike autograd through a cumsum of per-chunk weights.

Precision: ``S`` and ``R`` are float32 (float64 for float64 inputs). In float32/float64 the
down projection and the fast weight are merged (``w0 + lr S`` in one matmul, the cheapest
form); in bf16/fp16 the fast term ``z (lr S)^T`` is a separate matmul so that a small update is
not rounded away against ``w0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .layout import SlotLayout
from .segments import find_segments


def inplace_ttt(
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
    stats: dict | None = None,
    group=None,
) -> Tensor | tuple[Tensor, Tensor]:
    """In-Place TTT down projection.

    ``out_t = z_t (w0 + lr * sum_j dW_j)^T`` over the earlier complete chunks ``j`` of ``t``'s
    document, ``dW_j = v_j^T z_j`` (scaled to norm `clip_tau` if larger).

    Args:
        z: ``[B, T, h]`` gated hidden states (the down projection's input).
        v: ``[B, T, d]`` targets.
        w0: ``[d, h]`` the down projection's weight, or None for the fast-weight term alone
            (``lr z S^T``), which is how a layer keeps its own down projection module.
        lr: fast-weight learning rate.
        chunk_size: tokens per chunk, counted from each document's start.
        position_ids: ``[B, T]`` positions (see `segments.py`: 0 or a jump starts a document,
            negative is padding). Padding takes no part in any update and its output is
            unspecified (finite). Without it, each row is one document at positions ``0..T-1``.
        clip_tau: clip each chunk update to this Frobenius norm (inference option).
        initial_state: ``[B, d, h]`` the sum of earlier chunk updates of each row's first
            document, used unless that row begins a new document (position 0).
        output_final_state: also return the state a next token (last position + 1, same
            document) would see: the current document's complete chunks. A caller resuming
            mid-chunk passes that chunk's tokens again.

        stats: a dict to fill with telemetry: ``updates`` (chunk updates folded in),
            ``clipped`` (how many of them clipping scaled down) and ``fast_norm`` (mean over rows
            of ``||S||_F`` at the end). Costs a host sync; for logging, not for every step.
        group: a `torch.distributed` process group over which the sequences are split along
            time: this rank holds a contiguous slice of every row (see `distributed.py`), and
            `position_ids` are that slice's global positions. A collective: every rank of the
            group calls it, each with at least one token; no `initial_state` or
            `output_final_state` (those belong to streaming, on one rank).

    Returns:
        ``out`` ``[B, T, d]``, and the float32 (float64) final state ``[B, d, h]`` if asked.
    """
    if group is not None:
        from .distributed import context_parallel_ttt

        return context_parallel_ttt(
            z, v, w0, lr, chunk_size, group=group, position_ids=position_ids, clip_tau=clip_tau, stats=stats,
            single_process_only=initial_state is not None or output_final_state,
        )
    _check(z, v, w0, lr, chunk_size, clip_tau, initial_state)
    B, T, h = z.shape
    if B == 0 or T == 0:  # nothing to read: the state passes through
        final = z.new_zeros(B, v.shape[-1], h, dtype=state_dtype(z.dtype)) if initial_state is None else initial_state.to(state_dtype(z.dtype)).clone()
        if stats is not None:
            stats.update(updates=0, clipped=0, fast_norm=float(final.flatten(1).norm(dim=1).mean()) if B else 0.0)
        out = z.new_zeros(B, T, v.shape[-1])
        return (out, final) if output_final_state else out
    seg = find_segments(position_ids, z.shape[0], z.shape[1], chunk_size, z.device)
    layout = SlotLayout(seg, has_positions=position_ids is not None, final_state=output_final_state)
    out, final = _InPlaceTTT.apply(z, v, w0, initial_state, float(lr), clip_tau, layout)
    if stats is not None:
        with torch.no_grad():
            updated = layout.update.T  # [B, n]
            stats["updates"] = int(updated.sum())
            clipped = 0 if layout.clip is None else int(((layout.clip.T < 1) & updated).sum())
            stats["clipped"] = clipped
            stats["fast_norm"] = float(final.flatten(1).norm(dim=1).mean()) if final.shape[0] else 0.0
    return (out, final) if output_final_state else out


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the fast-weight sum for inputs of `dtype`: never below float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(z, v, w0, lr, chunk_size, clip_tau, initial_state) -> None:
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


class _Scan:
    """The chunk scan's state and its steps, shared by the forward pass and the backward's
    forward sweep so that both rebuild bit-identical states.

    `[B, d, h]` results go into buffers allocated once (or straight into the state with an
    in-place batched GEMM): a fresh 16 MB output per chunk costs as much in page faults as
    the GEMM that fills it.
    """

    def __init__(self, z: Tensor, v: Tensor, w0: Tensor | None, initial_state: Tensor | None, lr: float, layout: SlotLayout):
        self.z, self.v, self.w0, self.lr, self.layout = z, v, w0, lr, layout
        B, _, h = z.shape
        d = v.shape[-1]
        self.shape = (B, d, h)
        self.sdt = state_dtype(z.dtype)
        self.merged = w0 is not None and z.dtype in (torch.float32, torch.float64)
        if initial_state is None:
            self.S = z.new_zeros(B, d, h, dtype=self.sdt)
        else:
            self.S = initial_state.to(self.sdt, copy=True)
        self.live = [initial_state is not None] * B  # host view: rows whose S may be non-zero
        self._weight = None  # buffer: w0 + lr S (merged) or S in a low compute dtype
        self._delta = None  # buffer: one chunk's update

    def reset(self, s: int) -> None:
        keep = self.layout.keep_host[s]
        if not all(keep):
            _zero_rows(self.S, ~self.layout.keep[s])
            self.live = [a and k for a, k in zip(self.live, keep)]

    def weight(self) -> tuple[Tensor, float] | None:
        """`(W, alpha)` with the slot's fast weight ``alpha * W`` (`[B, d, h]`, compute dtype),
        or None when it is zero."""
        if self.merged:
            if not any(self.live):
                return self.w0.expand(self.shape), 1.0
            if self._weight is None:
                self._weight = torch.empty(self.shape, dtype=self.z.dtype, device=self.z.device)
            return torch.add(self.w0, self.S, alpha=self.lr, out=self._weight), 1.0
        if not any(self.live):
            return None
        if self.S.dtype == self.z.dtype:
            return self.S, self.lr
        if self._weight is None:
            self._weight = torch.empty(self.shape, dtype=self.z.dtype, device=self.z.device)
        return self._weight.copy_(self.S * self.lr), 1.0  # scaled first: S alone may exceed fp16's range

    def delta(self, s: int, zs: Tensor) -> Tensor:
        """The unclipped chunk update `V_s^T z_s` `[B, d, h]` (in a reused buffer)."""
        vs, zs = _update_operands(self.layout.gather(self.v, s), zs)
        if self._delta is None:
            self._delta = torch.empty(self.shape, dtype=zs.dtype, device=zs.device)
        return torch.bmm(vs.mT, zs, out=self._delta)

    def fold(self, s: int, zs: Tensor, clip: Tensor | None, dW: Tensor | None = None) -> None:
        """``S += clip * V_s^T z_s`` for the rows whose slot `s` updates; `dW`: the update if
        already computed."""
        upd = self.layout.update_host[s]
        if dW is None and clip is None and all(upd) and self.S.dtype == zs.dtype:
            self.S.baddbmm_(self.layout.gather(self.v, s).mT, zs)  # no [B, d, h] temporary
        else:
            dW = self.delta(s, zs) if dW is None else dW
            if clip is not None:
                dW = dW * clip.to(dW.dtype)[:, None, None]
            if not all(upd):
                dW = torch.where(self.layout.update[s][:, None, None], dW, 0)
            self.S.add_(dW)
        self.live = [a or u for a, u in zip(self.live, upd)]


def _update_operands(vs: Tensor, zs: Tensor) -> tuple[Tensor, Tensor]:
    """fp16 chunk updates are formed in fp32: a sum over a long chunk overflows fp16's range."""
    if zs.dtype == torch.float16:
        return vs.float(), zs.float()
    return vs, zs


def _zero_rows(t: Tensor, rows: Tensor) -> None:
    """Zero `t[b]` where `rows[b]`, in place; unlike a multiply by 0 this also clears inf/NaN."""
    t.masked_fill_(rows[:, None, None], 0)


def chunk_update(v: Tensor, z: Tensor, clip_tau: float | None = None) -> Tensor:
    """One chunk's update ``v^T z`` per row (`[B, C, d]`, `[B, C, h]` -> `[B, d, h]`) in the
    state dtype, clipped to norm `clip_tau`: what the scan adds, for callers that step by hand."""
    v, z = _update_operands(v, z)
    dW = (v.mT @ z).to(state_dtype(z.dtype))
    if clip_tau is not None:
        dW *= clip_factor(dW, clip_tau)[:, None, None]
    return dW


def clip_factor(dW: Tensor, tau: float) -> Tensor:
    """`min(1, tau / ||dW||_F)` per row, in float32 or wider; 1 for a zero update."""
    return (tau / dW.flatten(1).to(state_dtype(dW.dtype)).norm(dim=1)).clamp(max=1.0)


class _InPlaceTTT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, v, w0, initial_state, lr, clip_tau, layout):
        with torch.autocast(z.device.type, enabled=False):  # dtypes are chosen here, not by autocast
            return _InPlaceTTT._forward(ctx, z, v, w0, initial_state, lr, clip_tau, layout)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_final):
        saved = ctx.saved_tensors  # read once: checkpointing allows one unpack
        with torch.autocast(saved[0].device.type, enabled=False):
            return _InPlaceTTT._backward(ctx, saved, g_out, g_final)

    @staticmethod
    def _forward(ctx, z, v, w0, initial_state, lr, clip_tau, layout):
        ctx.set_materialize_grads(False)
        scan = _Scan(z, v, w0, initial_state, lr, layout)
        B = z.shape[0]
        if w0 is None or scan.merged:
            out = z.new_zeros(*z.shape[:2], v.shape[-1])
        else:
            out = F.linear(z, w0)
        clip = z.new_ones(layout.n_slots, B, dtype=scan.sdt) if clip_tau is not None else None
        for s in range(layout.n_slots):
            scan.reset(s)
            zs = layout.gather(z, s)
            fast = scan.weight()
            if fast is not None:
                layout.add_matmul_(out, s, zs, fast[0].mT, fast[1])
            if any(layout.update_host[s]):
                dW = None
                if clip is not None:
                    dW = scan.delta(s, zs)
                    clip[s] = clip_factor(dW, clip_tau)
                scan.fold(s, zs, None if clip is None else clip[s], dW)
        ctx.save_for_backward(z, v, w0, initial_state, clip)
        layout.clip = clip  # for the caller's telemetry
        ctx.lr, ctx.clip_tau, ctx.layout = lr, clip_tau, layout
        return out, scan.S

    @staticmethod
    def _backward(ctx, saved, g_out, g_final):
        z, v, w0, initial_state, clip = saved
        lr, layout = ctx.lr, ctx.layout
        need_w0, need_init = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        scan = _Scan(z, v, w0, initial_state, lr, layout)
        B, T, h = z.shape
        d = v.shape[-1]
        G = g_out.contiguous() if g_out is not None else z.new_zeros(B, T, d)

        grad_w0 = None
        if w0 is not None and not scan.merged:
            grad_z = G @ w0
            if need_w0:
                grad_w0 = (G.reshape(-1, d).mT @ z.reshape(-1, h)).to(w0.dtype)
        else:
            grad_z = z.new_zeros(B, T, h)
        grad_v = torch.zeros_like(v)

        # forward sweep: rebuild S_s; dz_s += G_s W_s
        for s in range(layout.n_slots):
            scan.reset(s)
            zs = layout.gather(z, s)
            fast = scan.weight()
            if fast is not None:
                layout.add_matmul_(grad_z, s, layout.gather(G, s), fast[0], fast[1])
            if any(layout.update_host[s]):
                scan.fold(s, zs, None if clip is None else clip[s])

        # reverse sweep: R = dL/dS after slot s; Q_s = dL/d(dW_s)
        scan.S = scan._weight = None  # not needed any more
        R = g_final.to(scan.sdt, copy=True) if g_final is not None else z.new_zeros(B, d, h, dtype=scan.sdt)
        live = [g_final is not None] * B
        keep_M = scan.merged and need_w0  # dL/dw0 is the sum of every slot's G_s^T z_s
        acc_w0 = z.new_zeros(d, h, dtype=scan.sdt) if keep_M else None
        M = None
        for s in reversed(range(layout.n_slots)):
            zs = layout.gather(z, s)
            upd = layout.update_host[s]
            if any(u and a for u, a in zip(upd, live)):
                Q = R if all(upd) else torch.where(layout.update[s][:, None, None], R, 0)
                if clip is not None:
                    Q = _clip_backward(Q, scan.delta(s, zs), clip[s])
                Q = Q.to(z.dtype)
                layout.add_matmul_(grad_v, s, zs, Q.mT)
                layout.add_matmul_(grad_z, s, layout.gather(v, s), Q)
                del Q
            if keep_M or s > 0 or need_init:
                gs = layout.gather(G, s)
                if keep_M or R.dtype != zs.dtype:
                    if M is None:
                        M = torch.empty(B, d, h, dtype=z.dtype, device=z.device)
                    torch.bmm(gs.mT, zs, out=M)
                    R.add_(M, alpha=lr)
                    for M_row in M if keep_M else ():  # row by row: no [d, h] temporary
                        acc_w0 += M_row
                else:
                    R.baddbmm_(gs.mT, zs, alpha=lr)
                live = [True] * B
            keep = layout.keep_host[s]
            if not all(keep):
                _zero_rows(R, ~layout.keep[s])
                live = [a and k for a, k in zip(live, keep)]

        if acc_w0 is not None:
            grad_w0 = acc_w0.to(w0.dtype)
        grad_init = R.to(initial_state.dtype) if need_init else None
        return grad_z, grad_v, grad_w0, grad_init, None, None, None


def _clip_backward(Q: Tensor, dW: Tensor, c: Tensor) -> Tensor:
    """Gradient through ``y = c(x) x`` with ``c = min(1, tau/|x|)``: ``c (Q - <Q,x>/|x|^2 x)`` where clipped."""
    clipped = c < 1
    sq = dW.flatten(1).pow(2).sum(1).clamp_min(torch.finfo(dW.dtype).tiny)
    alpha = torch.where(clipped, (Q * dW).flatten(1).sum(1) / sq, 0.0)
    return c[:, None, None] * (Q - alpha[:, None, None] * dW)
