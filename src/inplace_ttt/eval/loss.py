"""Loss against position on long held-out documents.

- `bucket_edges` / `loss_by_position`: mean token loss in log-spaced position buckets
  (a token's position = how many tokens of its document precede it);
- `sliding_window`: the paper's Fig. 2 view: the loss of a fixed final block of each document
  as the context before it grows (context 0 = the block alone).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .stream import token_nll


def bucket_edges(max_len: int, first: int | None = None) -> list[int]:
    """``[0, b, 2b, 4b, ..., max_len]`` with ``b`` a power of two giving about eight buckets."""
    if first is None:
        first = max(16, 2 ** max(0, int(math.log2(max(max_len, 2))) - 7))
    edges, e = [0], first
    while e < max_len:
        edges.append(e)
        e *= 2
    return edges + [max_len]


def loss_by_position(model, docs: list[Tensor], edges: list[int], piece: int) -> dict:
    """Mean loss and token count per bucket ``[edges[i], edges[i+1])`` over all documents."""
    sums = torch.zeros(len(edges) - 1, dtype=torch.float64)
    counts = torch.zeros(len(edges) - 1, dtype=torch.long)
    bounds = torch.tensor(edges[1:-1])
    for ids in docs:
        nll = token_nll(model, ids[: edges[-1]], piece).cpu().double()
        positions = torch.arange(1, len(nll) + 1)  # the predicted token's position: tokens before it
        bucket = torch.bucketize(positions, bounds, right=True)
        sums.index_add_(0, bucket, nll)
        counts.index_add_(0, bucket, torch.ones_like(bucket))
    return {
        "edges": edges,
        "loss": [float(s / c) if c else None for s, c in zip(sums, counts)],
        "tokens": counts.tolist(),
    }


def sliding_window(model, docs: list[Tensor], contexts: list[int], block: int, piece: int) -> dict:
    """Mean loss (and perplexity) of each document's last `block` tokens after `c` tokens of context."""
    rows = {}
    for c in contexts:
        losses = []
        for ids in docs:
            if len(ids) >= c + block + 1:
                window = ids[len(ids) - c - block - 1 :]
                losses.append(token_nll(model, window, piece)[-block:].mean().item())
        if losses:
            mean = sum(losses) / len(losses)
            rows[c] = {"loss": mean, "ppl": math.exp(mean), "documents": len(losses)}
    return {"block": block, "contexts": rows}
