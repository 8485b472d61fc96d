"""Slots: the chunk-by-chunk schedule the fast op scans.

Slot `s` of row `b` is the `s`-th segment (one chunk of one document) of that row. All rows
advance through slots together, so one batched matmul serves every row at each step, however the
rows are packed. Each slot also says, per row, whether the state is reset before it (`keep`) and
whether its update is folded into the state after it (`update`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .segments import Segments


class SlotLayout:
    """Gather a slot's tokens out of a `[B, T, F]` tensor and write results back.

    Two cases share one interface: when every row has the same segment boundaries and no
    padding (no `position_ids`, one packed row, or identical rows), a slot is a column range
    and gathers are views; otherwise a slot is a pair of index lists (token, slot entry).
    """

    def __init__(self, seg: Segments, has_positions: bool, final_state: bool = True):
        B, T = seg.shape
        device = seg.positions.device
        self.batch, self.length = B, T
        self.clip: Tensor | None = None  # clip factors [n, B] once a forward pass ran
        self.record_norms = False  # set by a caller that wants each update's norm (telemetry)
        self.norms: Tensor | None = None  # update norms [n, B] once a forward pass ran, if clipping or `record_norms`
        counts = seg.seg_start.sum(1)
        self.n_slots = int(counts.max()) if B and T else 0
        n = self.n_slots

        # per (row, slot): does the slot start a document; is it followed by a slot of the same doc
        starts_doc = torch.zeros(B, n + 1, dtype=torch.bool, device=device)
        flat_first = seg.seg_start.nonzero(as_tuple=True)
        starts_doc[flat_first[0], seg.seg_index[flat_first]] = seg.doc_start[flat_first]
        slot = torch.arange(n + 1, device=device)
        exists = slot[None, :] < counts[:, None]
        followed = exists[:, 1:] & ~starts_doc[:, 1:]
        # the row's last slot feeds only the final state: folded in if wanted and its chunk is complete
        last_col, _ = seg.last_token()
        complete = (last_col >= 0) & ~seg.ends_mid_chunk() & final_state
        is_last = slot[None, :n] == (counts - 1)[:, None]
        update = followed | (is_last & complete[:, None])
        keep = ~(starts_doc[:, :n] & exists[:, :n])
        self.keep_host: list[list[bool]] = keep.T.tolist()
        self.update_host: list[list[bool]] = update.T.tolist()
        self.keep = keep.T.contiguous()  # [n, B]
        self.update = update.T.contiguous()  # [n, B]

        aligned = not has_positions or (bool(seg.valid.all()) and bool((seg.seg_start == seg.seg_start[:1]).all()))
        if aligned:
            bounds = seg.seg_start[0].nonzero()[:, 0].tolist() + [T]
            self.ranges = list(zip(bounds[:-1], bounds[1:]))
            self.index = None
        else:
            self.ranges = None
            rows, cols = seg.valid.nonzero(as_tuple=True)
            slots = seg.seg_index[rows, cols]
            first_col = torch.cummax(torch.where(seg.seg_start, torch.arange(T, device=device), -1), dim=1).values
            rank = cols - first_col[rows, cols]
            seg_len = torch.zeros(B, n, dtype=torch.long, device=device)
            seg_len.index_put_((rows, slots), torch.ones_like(rows), accumulate=True)
            widths = seg_len.max(0).values.tolist()
            order = torch.argsort(slots, stable=True)
            per_slot = torch.bincount(slots, minlength=n).tolist()
            width_of = torch.tensor(widths, device=device, dtype=torch.long)
            entry = rows * width_of[slots] + rank
            token = rows * T + cols
            self.widths = widths
            self.index = list(zip(token[order].split(per_slot), entry[order].split(per_slot)))

    def gather(self, x: Tensor, s: int) -> Tensor:
        """`[B, w, F]` tokens of slot `s` (zeros where a row has no token)."""
        if self.index is None:
            a, b = self.ranges[s]
            return x[:, a:b]
        token, entry = self.index[s]
        F = x.shape[-1]
        out = x.new_zeros(self.batch * self.widths[s], F)
        out.index_copy_(0, entry, x.reshape(-1, F).index_select(0, token))
        return out.view(self.batch, self.widths[s], F)

    def add_matmul_(self, buf: Tensor, s: int, a: Tensor, b: Tensor, alpha: float = 1.0) -> None:
        """Add ``alpha * a @ b`` (`[B, w, F]`, rows as from `gather`) into the slot's tokens of `buf`
        (`[B, T, F]`); in place, with no temporary, where the slot is a column range."""
        if self.index is None:
            lo, hi = self.ranges[s]
            buf[:, lo:hi].baddbmm_(a, b, alpha=alpha)
            return
        token, entry = self.index[s]
        F = buf.shape[-1]
        val = torch.bmm(a, b).reshape(-1, F).index_select(0, entry)
        buf.view(-1, F).index_add_(0, token, val, alpha=alpha)
