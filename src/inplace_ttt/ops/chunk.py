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

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .common import check_inputs, clip_backward, factor_of_norm, state_dtype, update_norm, update_operands, zero_rows
from .layout import SlotLayout
from .segments import Segments, check_segments, find_segments


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
            zero_rows(self.S, ~self.layout.keep[s])
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
        vs, zs = update_operands(self.layout.gather(self.v, s), zs)
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


def chunk_fwd(
    z: Tensor, v: Tensor, w0: Tensor | None, initial_state: Tensor | None, lr: float, clip_tau: float | None, layout: SlotLayout
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The forward scan: ``(out, final state, clip factors [n_slots, B] or None)``. With clipping,
    or when `layout.record_norms` asks for them, each update is formed on its own and its norm kept
    in `layout.norms` ``[n_slots, B]`` (telemetry: what clipping at any tau would keep)."""
    scan = _Scan(z, v, w0, initial_state, lr, layout)
    B = z.shape[0]
    if w0 is None or scan.merged:
        out = z.new_zeros(*z.shape[:2], v.shape[-1])
    else:
        out = F.linear(z, w0)
    clip = z.new_ones(layout.n_slots, B, dtype=scan.sdt) if clip_tau is not None else None
    norms = z.new_zeros(layout.n_slots, B, dtype=scan.sdt) if clip is not None or layout.record_norms else None
    for s in range(layout.n_slots):
        scan.reset(s)
        zs = layout.gather(z, s)
        fast = scan.weight()
        if fast is not None:
            layout.add_matmul_(out, s, zs, fast[0].mT, fast[1])
        if any(layout.update_host[s]):
            dW = None
            if norms is not None:
                dW = scan.delta(s, zs)
                norms[s] = update_norm(dW)
                if clip is not None:
                    clip[s] = factor_of_norm(norms[s], clip_tau)
            scan.fold(s, zs, None if clip is None else clip[s], dW)
    layout.norms = norms
    return out, scan.S, clip


def chunk_bwd(
    z: Tensor,
    v: Tensor,
    w0: Tensor | None,
    initial_state: Tensor | None,
    clip: Tensor | None,
    lr: float,
    layout: SlotLayout,
    g_out: Tensor | None,
    g_final: Tensor | None,
    need_w0: bool,
    need_init: bool,
):
    """The backward: a forward sweep rebuilding each state, then the reverse scan; returns the
    gradients of ``(z, v, w0, initial_state)`` (None where not needed)."""
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
        if any(layout.update_host[s]):  # each update formed as the forward formed it: bit-identical states
            scan.fold(s, zs, None if clip is None else clip[s], scan.delta(s, zs) if layout.norms is not None else None)

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
                Q = clip_backward(Q, scan.delta(s, zs), clip[s])
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
            zero_rows(R, ~layout.keep[s])
            live = [a and k for a, k in zip(live, keep)]

    if acc_w0 is not None:
        grad_w0 = acc_w0.to(w0.dtype)
    grad_init = R.to(initial_state.dtype) if need_init else None
    return grad_z, grad_v, grad_w0, grad_init


class ChunkInPlaceTTTFunction(torch.autograd.Function):
    """Autograd glue around `chunk_fwd` / `chunk_bwd`; dtypes are chosen there, not by autocast."""

    @staticmethod
    def forward(ctx, z, v, w0, initial_state, lr, clip_tau, layout):
        ctx.set_materialize_grads(False)
        with torch.autocast(z.device.type, enabled=False):
            out, final, clip = chunk_fwd(z, v, w0, initial_state, lr, clip_tau, layout)
        ctx.save_for_backward(z, v, w0, initial_state, clip)
        layout.clip = clip  # for the caller's telemetry
        ctx.lr, ctx.layout = lr, layout
        return out, final

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_final):
        z, v, w0, initial_state, clip = ctx.saved_tensors  # read once: checkpointing allows one unpack
        with torch.autocast(z.device.type, enabled=False):
            grads = chunk_bwd(z, v, w0, initial_state, clip, ctx.lr, ctx.layout, g_out, g_final, ctx.needs_input_grad[2], ctx.needs_input_grad[3])
        return (*grads, None, None, None)


def chunk_inplace_ttt(
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
    segments: Segments | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The In-Place TTT op on one process: the contract of `ops.inplace_ttt` without ``group``."""
    check_inputs(z, v, w0, lr, chunk_size, clip_tau, initial_state)
    B, T, h = z.shape
    if B == 0 or T == 0:  # nothing to read: the state passes through
        final = z.new_zeros(B, v.shape[-1], h, dtype=state_dtype(z.dtype)) if initial_state is None else initial_state.to(state_dtype(z.dtype)).clone()
        if stats is not None:
            none = torch.zeros(0, dtype=torch.float64)
            stats.update(updates=0, clipped=0, update_norms=none, clip_factors=none, fast_norm=float(final.flatten(1).norm(dim=1).mean()) if B else 0.0)
        out = z.new_zeros(B, T, v.shape[-1])
        return (out, final) if output_final_state else out
    seg = segments if segments is not None else find_segments(position_ids, B, T, chunk_size, z.device)
    check_segments(seg, B, T, chunk_size)
    layout = SlotLayout(seg, has_positions=position_ids is not None, final_state=output_final_state)
    layout.record_norms = stats is not None
    out, final = ChunkInPlaceTTTFunction.apply(z, v, w0, initial_state, float(lr), clip_tau, layout)
    if stats is not None:
        record_stats(stats, layout, final)
    return (out, final) if output_final_state else out


@torch.no_grad()
def record_stats(stats: dict, layout: SlotLayout, final: Tensor) -> None:
    """`stats` of a forward (see `ops.inplace_ttt`): counts, the norm of each folded update
    and the share clipping kept of it, and the final fast-weight norm."""
    updated = layout.update  # [n, B]
    stats["updates"] = int(updated.sum())
    stats["update_norms"] = layout.norms[updated].double().cpu()
    kept = layout.clip[updated] if layout.clip is not None else torch.ones_like(layout.norms[updated])
    stats["clip_factors"] = kept.double().cpu()
    stats["clipped"] = int((kept < 1).sum())
    stats["fast_norm"] = float(final.flatten(1).norm(dim=1).mean()) if final.shape[0] else 0.0
