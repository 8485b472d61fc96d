"""`inplace_ttt`: the one public entry to the op, on one process or across a process group.

`chunk.chunk_inplace_ttt` is the chunk scan on one process; `distributed.context_parallel_ttt`
splits the sequences along time across a group, on top of it.
"""

from __future__ import annotations

from torch import Tensor

from .chunk import chunk_inplace_ttt
from .distributed import context_parallel_ttt
from .segments import Segments


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
    segments: Segments | None = None,
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
            ``update_norms`` and ``clip_factors`` (float64 CPU tensors, one entry per folded
            update: its Frobenius norm before clipping, and the share of it clipping kept, 1
            when untouched), ``clipped`` (how many of them clipping scaled down) and
            ``fast_norm`` (mean over rows of ``||S||_F`` at the end). Each update is then formed
            on its own to take its norm, and the numbers cost a host sync: for logging.
        group: a `torch.distributed` process group over which the sequences are split along
            time: this rank holds a contiguous slice of every row (see `distributed.py`), and
            `position_ids` are that slice's global positions. A collective: every rank of the
            group calls it, each with at least one token; no `initial_state` or
            `output_final_state` (those belong to streaming, on one rank).
        segments: the batch's documents and chunks (`segments.find_segments` of `position_ids`
            and `chunk_size`), found once by a caller that runs several layers on one batch;
            None: found here. One process only.

    Returns:
        ``out`` ``[B, T, d]``, and the float32 (float64) final state ``[B, d, h]`` if asked.
    """
    if group is not None:
        return context_parallel_ttt(
            z,
            v,
            w0,
            lr,
            chunk_size,
            group=group,
            position_ids=position_ids,
            clip_tau=clip_tau,
            stats=stats,
            single_process_only=initial_state is not None or output_final_state,
        )
    return chunk_inplace_ttt(
        z,
        v,
        w0,
        lr,
        chunk_size,
        position_ids=position_ids,
        clip_tau=clip_tau,
        initial_state=initial_state,
        output_final_state=output_final_state,
        stats=stats,
        segments=segments,
    )
