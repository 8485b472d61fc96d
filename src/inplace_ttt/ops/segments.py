"""Where documents and chunks begin in a batch of rows, from `position_ids`.

The rules, shared by every op so that the fast op, the reference, the convolution and the
streaming cache agree:

- a negative position marks padding: it belongs to no document and no chunk;
- a document starts at a token whose position is 0, or whose position is not the previous
  non-padding token's position + 1 (the rule transformers uses for packed rows);
- a token's chunk is ``position // chunk_size``; a segment is one chunk of one document;
- without `position_ids` a row is one document at positions ``0..T-1`` that continues whatever
  state it is given (it has no document start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Segments:
    """Per-token structure of a `[B, T]` batch."""

    positions: Tensor  # [B, T] long; negative = padding
    valid: Tensor  # [B, T] bool
    doc_start: Tensor  # [B, T] bool: first token of a document
    seg_start: Tensor  # [B, T] bool: first token of a segment (chunk of a document) in its row
    seg_index: Tensor  # [B, T] long: segment number within the row, -1 for padding
    seg_key: Tensor  # [B, T] long: equal for two tokens iff they are in the same segment of one row
    chunk_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.positions.shape)  # type: ignore[return-value]

    def last_token(self) -> tuple[Tensor, Tensor]:
        """Each row's last token: its column and position (`[B]` each; -1 and -1 for a row of padding)."""
        B, T = self.shape
        if T == 0:
            none = torch.full((B,), -1, dtype=torch.long, device=self.positions.device)
            return none, none
        col = torch.where(self.valid, torch.arange(T, device=self.positions.device), -1).max(1).values
        return col, torch.where(col >= 0, self.positions.gather(1, col.clamp(min=0)[:, None])[:, 0], -1)

    def ends_mid_chunk(self) -> Tensor:
        """`[B]` bool: the row's last token leaves its chunk unfinished (its update cannot be formed
        yet: the next tokens, another rank's or the stream's, complete it). False for a row of padding."""
        col, pos = self.last_token()
        return (col >= 0) & ((pos + 1) % self.chunk_size != 0)


def find_segments(position_ids: Tensor | None, batch: int, length: int, chunk_size: int, device: torch.device) -> Segments:
    """Segments of a batch; raises if padding sits inside a chunk of a document."""
    col = torch.arange(length, device=device)
    if position_ids is None:
        pos = col.expand(batch, length)
        valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        doc_start = torch.zeros_like(valid)
        seg_start = (col % chunk_size == 0).expand(batch, length)
        seg_index = (col // chunk_size).expand(batch, length)
    else:
        if position_ids.shape != (batch, length):
            raise ValueError(f"position_ids must have shape [B, T] = {[batch, length]}; got {list(position_ids.shape)}")
        if position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool:
            raise ValueError(f"position_ids must be an integer tensor; got {position_ids.dtype}")
        pos = position_ids.to(device=device, dtype=torch.long)
        valid = pos >= 0
        # column of the previous non-padding token in the row (-1 if none)
        last_valid = torch.cummax(torch.where(valid, col, -1), dim=1).values
        prev_col = torch.cat([last_valid.new_full((batch, 1), -1), last_valid[:, :-1]], dim=1)[:, :length]  # [B, 0] stays empty
        has_prev = prev_col >= 0
        prev_pos = pos.gather(1, prev_col.clamp(min=0))
        doc_start = valid & ((pos == 0) | (has_prev & (pos != prev_pos + 1)))
        seg_start = valid & (~has_prev | doc_start | (pos // chunk_size != prev_pos // chunk_size))
        gap = valid & ~seg_start & (prev_col != col - 1)
        if bool(gap.any()):
            b, t = (int(i) for i in gap.nonzero()[0])
            raise ValueError(
                f"padding inside a chunk of a document (row {b}, column {t}): put padding at the start "
                f"or end of a row or between documents, never between tokens of one document"
            )
        seg_index = torch.where(valid, seg_start.long().cumsum(1) - 1, -1)
    # padding gets a key of its own (negative, unique per column) so it never matches a token
    seg_key = torch.where(valid, seg_index, -1 - col)
    return Segments(pos, valid, doc_start, seg_start, seg_index, seg_key, chunk_size)


def check_segments(seg: Segments, batch: int, length: int, chunk_size: int) -> None:
    """Segments found beforehand (once per forward, shared by the layers) must be of this batch's shape and chunk size."""
    if seg.shape != (batch, length) or seg.chunk_size != chunk_size:
        raise ValueError(f"segments of {list(seg.shape)} tokens in chunks of {seg.chunk_size} given for {[batch, length]} tokens in chunks of {chunk_size}")
