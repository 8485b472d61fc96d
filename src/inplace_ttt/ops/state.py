"""The streaming states of one TTT layer for one batch of sequences (the ops of `ops.recurrent`
read tokens into them).

They live outside the module (a generation cache owns one per TTT layer), so batch size is free,
eval never touches trained weights, and rows reset independently.

`FastWeightState` (any number of tokens per row per call) holds:

- `fast_sum` ``[B, d, h]`` float32: the sum of (clipped) updates of the current document's
  complete chunks, the ``S`` of ``W = W0 + lr S``;
- the target-source inputs and gated hidden states of the chunk being read, stored at column
  ``position % chunk_size``: its update needs the whole chunk (the target convolution looks
  ahead inside it), so it is computed when the chunk's last token arrives;
- `last_pos` ``[B]``: the last position seen per row (-1: nothing yet).

`FixedStepState` (one token per row per call, fixed shapes for CUDA graphs) is described below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class FastWeightState:
    """Per-sequence fast-weight state of one layer. Empty until the layer first writes it."""

    ROWS = ("fast_sum", "buf_src", "buf_z", "buf_valid", "last_pos")  # the tensors holding one row per sequence

    def __init__(self) -> None:
        self._fast_sum: Tensor | None = None
        self._cast: tuple | None = None  # (key, lr S or W0 + lr S in a dtype): see `apply`; dropped whenever S changes
        self.buf_src: Tensor | None = None
        self.buf_z: Tensor | None = None
        self.buf_valid: Tensor | None = None
        self.last_pos: Tensor | None = None

    @property
    def fast_sum(self) -> Tensor | None:
        return self._fast_sum

    @fast_sum.setter
    def fast_sum(self, value: Tensor | None) -> None:
        self._fast_sum = value
        self._cast = None

    @property
    def initialized(self) -> bool:
        return self.fast_sum is not None

    @property
    def batch_size(self) -> int:
        return 0 if self.last_pos is None else self.last_pos.shape[0]

    def init(self, batch: int, d: int, h: int, src_dim: int, chunk_size: int, dtype: torch.dtype, state_dtype: torch.dtype, device) -> None:
        self.fast_sum = torch.zeros(batch, d, h, dtype=state_dtype, device=device)
        self.buf_src = torch.zeros(batch, chunk_size, src_dim, dtype=dtype, device=device)
        self.buf_z = torch.zeros(batch, chunk_size, h, dtype=dtype, device=device)
        self.buf_valid = torch.zeros(batch, chunk_size, dtype=torch.bool, device=device)
        self.last_pos = torch.full((batch,), -1, dtype=torch.long, device=device)

    def apply(self, z: Tensor, lr: float, w0: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """One token per row (`z` `[B, h]` -> `[B, d]`) through the fast weight: the fast-weight
        term ``lr z S^T``, or with `w0` (and `bias`) the whole down projection ``z (W0 + lr S)^T + b``,
        one matrix product per row.

        It multiplies by ``lr S`` (or ``W0 + lr S``) in z's dtype, kept until the state, `lr` or
        ``W0`` changes: a ``[B, d, h]`` tensor beside S. The sum and the scaling happen in S's
        float32 before the cast (S alone may exceed fp16's range)."""
        key = (z.dtype, lr, None if w0 is None else (w0.data_ptr(), w0._version))
        if w0 is None and self._fast_sum.dtype == z.dtype:
            return (z[:, None] @ self._fast_sum.mT)[:, 0] * lr
        if self._cast is None or self._cast[0] != key:
            weight = self._fast_sum * lr if w0 is None else torch.add(w0.to(self._fast_sum.dtype), self._fast_sum, alpha=lr)
            self._cast = (key, weight.to(z.dtype))
        weight = self._cast[1]
        out = F.linear(z, weight[0]) if z.shape[0] == 1 else (z[:, None] @ weight.mT)[:, 0]
        return out if bias is None else out + bias

    def add_to_rows(self, rows: Tensor, update: Tensor) -> None:
        """``fast_sum[rows] += update`` (a chunk completed in those rows)."""
        self._fast_sum[rows] += update
        self._cast = None

    def reset(self, rows: Tensor | list[int] | None = None) -> None:
        """Forget the given rows (all if None): they start a new sequence with the pretrained weights."""
        if not self.initialized:
            return
        if rows is None:
            mask = torch.ones_like(self.last_pos, dtype=torch.bool)
        else:
            rows = torch.as_tensor(rows, device=self.last_pos.device)
            rows = rows.long() if rows.dtype != torch.bool else rows
            if rows.dtype == torch.bool:
                mask = rows
            else:
                mask = torch.zeros_like(self.last_pos, dtype=torch.bool)
                mask[rows] = True
        self.restart_rows(mask)
        self.last_pos.masked_fill_(mask, -1)

    def restart_rows(self, mask: Tensor) -> None:
        """Zero the fast weights and the chunk buffer of rows where `mask` (a new document begins)."""
        self._fast_sum.masked_fill_(mask[:, None, None], 0)  # not a multiply: inf * 0 would stay NaN
        self._cast = None
        self.buf_valid &= ~mask[:, None]

    def reorder(self, index: Tensor) -> None:
        """Select/reorder rows (beam search): row `i` becomes old row `index[i]`."""
        if not self.initialized:
            return
        for name in self.ROWS:
            t = getattr(self, name)
            setattr(self, name, t.index_select(0, index.to(t.device)))

    @classmethod
    def joined(cls, states: list[FastWeightState]) -> FastWeightState:
        """One state holding the rows of `states` in order (each row is indexed by its own positions,
        so rows that read different numbers of tokens stack as they are)."""
        out = cls()
        if not all(s.initialized for s in states):
            raise ValueError("FastWeightState.joined: every state must have read tokens")
        for name in cls.ROWS:
            setattr(out, name, torch.cat([getattr(s, name) for s in states]))
        return out

    def buffered(self) -> tuple[Tensor, Tensor, Tensor]:
        """The unfinished chunk's tokens, right-aligned: `(src [B, m, F], z [B, m, h], pos [B, m])`.

        Right alignment puts each row's buffered tokens next to its next token, so a chunk
        stays contiguous when new tokens are appended (padding goes to the left).
        """
        count = self.buf_valid.sum(1)
        m = int(count.max()) if count.numel() else 0
        j = torch.arange(m, device=count.device)
        back = (m - 1 - j)[None, :]  # how many tokens before the last buffered one
        valid = back < count[:, None]
        pos = torch.where(valid, self.last_pos[:, None] - back, -1)
        col = (pos.clamp(min=0) % self.buf_valid.shape[1])[..., None]
        src = self.buf_src.gather(1, col.expand(-1, -1, self.buf_src.shape[-1]))
        z = self.buf_z.gather(1, col.expand(-1, -1, self.buf_z.shape[-1]))
        return src, z, pos

    def store(self, src: Tensor, z: Tensor, pos: Tensor, keep: Tensor) -> None:
        """Buffer tokens where `keep` (`[B, n]`) at column `pos % C`; the rest of the buffer empties."""
        C = self.buf_valid.shape[1]
        self.buf_valid.zero_()
        rows, cols = keep.nonzero(as_tuple=True)
        slot = pos[rows, cols] % C
        self.buf_src[rows, slot] = src[rows, cols]
        self.buf_z[rows, slot] = z[rows, cols]
        self.buf_valid[rows, slot] = True

    def write_token(self, src: Tensor, z: Tensor, pos: Tensor, valid: Tensor | None) -> None:
        """Buffer one token per row (`src [B, F]`, `z [B, h]`, `pos [B]`) where `valid` (None: every row)."""
        rows = torch.arange(pos.shape[0], device=pos.device)
        if valid is None:
            col = pos % self.buf_valid.shape[1]
            self.buf_src[rows, col] = src
            self.buf_z[rows, col] = z
            self.buf_valid[rows, col] = True
            self.last_pos.copy_(pos)
            return
        col = pos.clamp(min=0) % self.buf_valid.shape[1]
        self.buf_src[rows, col] = torch.where(valid[:, None], src, self.buf_src[rows, col])
        self.buf_z[rows, col] = torch.where(valid[:, None], z, self.buf_z[rows, col])
        self.buf_valid[rows, col] |= valid
        self.last_pos = torch.where(valid, pos, self.last_pos)


class FixedStepState:
    """Streaming state of one TTT layer for one token per row per step, safe to capture in a CUDA graph.

    Every tensor is allocated once and only updated in place, with masks instead of branches
    and no host reads, so a step replayed from a CUDA graph keeps updating it. The centred
    target convolution (radius ``r``) looks ``r`` tokens ahead inside a chunk, so token
    ``t - r``'s target is final once token ``t`` arrives (and the last ``r`` tokens' at the
    chunk's end): each step adds those tokens' rank-1 updates ``v^T z`` to `pending`, and the
    chunk's last token folds `pending` into `fast_sum`. It holds, per row:

    - `fast_sum` ``[B, d, h]``: the complete chunks' updates of the current conversation (``S``);
    - `pending` ``[B, d, h]``: the finalised tokens of the chunk being read;
    - `window_src` ``[B, 2r+1, F]`` / `window_pos` ``[B, 2r+1]``: the last ``2r+1`` tokens'
      target-source inputs and positions (-1: none), `window_z` ``[B, r+1, h]``: the last
      ``r+1`` gated hidden states;
    - `next_pos` ``[B]``: the position of the row's next token; `updates` ``[B]``: chunk
      updates folded in so far (telemetry; tests count them).
    """

    def __init__(self, batch: int, d: int, h: int, src_dim: int, kernel: int, dtype: torch.dtype, state_dtype: torch.dtype, device) -> None:
        self.radius = kernel // 2
        self.fast_sum = torch.zeros(batch, d, h, dtype=state_dtype, device=device)
        self.pending = torch.zeros(batch, d, h, dtype=state_dtype, device=device)
        self.window_src = torch.zeros(batch, kernel, src_dim, dtype=dtype, device=device)
        self.window_pos = torch.full((batch, kernel), -1, dtype=torch.long, device=device)
        self.window_z = torch.zeros(batch, self.radius + 1, h, dtype=dtype, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.updates = torch.zeros(batch, dtype=torch.long, device=device)

    def reset(self, mask: Tensor) -> None:
        """Rows where `mask` start a new sequence at position 0 with the pretrained weights (in place)."""
        mask = mask.to(device=self.next_pos.device, dtype=torch.bool)
        self.fast_sum.masked_fill_(mask[:, None, None], 0)  # not a multiply: inf * 0 would stay NaN
        self.pending.masked_fill_(mask[:, None, None], 0)
        # the old window is masked out by window_pos, but its z enter a matmul with zero targets: 0 * inf is NaN
        self.window_src.masked_fill_(mask[:, None, None], 0)
        self.window_z.masked_fill_(mask[:, None, None], 0)
        self.window_pos.masked_fill_(mask[:, None], -1)
        self.next_pos.masked_fill_(mask, 0)
