"""Loss against position on long held-out documents, with 95% bootstrap intervals over documents.

- `bucket_edges` / `loss_by_position`: mean token loss in log-spaced position buckets
  (a token's position = how many tokens of its document precede it);
- `sliding_window`: the paper's Fig. 2 view: the loss of a fixed final block of each document
  as the context before it grows (context 0 = the block alone).

Documents of the same length (all of them, for a sliding-window context) run as one batch.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from .intervals import mean_interval, ratio_interval
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


def batched_nll(model, rows: list[Tensor], piece: int, batch: int) -> list[Tensor]:
    """`token_nll` of each row, rows of one length `batch` at a time; in the order given."""
    by_length = defaultdict(list)
    for i, ids in enumerate(rows):
        by_length[len(ids)].append(i)
    out: list[Tensor | None] = [None] * len(rows)
    for members in by_length.values():
        for k in range(0, len(members), batch):
            group = members[k : k + batch]
            nll = token_nll(model, torch.stack([rows[i] for i in group]), piece).cpu().double()
            for i, values in zip(group, nll):
                out[i] = values
    return out


def loss_by_position(model, docs: list[Tensor], edges: list[int], piece: int, batch: int = 8, seed: int = 0) -> dict:
    """Mean loss, 95% interval over documents and token count per bucket ``[edges[i], edges[i+1])``."""
    n_buckets = len(edges) - 1
    sums = torch.zeros(len(docs), n_buckets, dtype=torch.float64)
    counts = torch.zeros(len(docs), n_buckets, dtype=torch.float64)
    bounds = torch.tensor(edges[1:-1])
    for d, nll in enumerate(batched_nll(model, [ids[: edges[-1]] for ids in docs], piece, batch)):
        positions = torch.arange(1, len(nll) + 1)  # the predicted token's position: tokens before it
        bucket = torch.bucketize(positions, bounds, right=True)
        sums[d].index_add_(0, bucket, nll)
        counts[d].index_add_(0, bucket, torch.ones_like(nll))
    total, tokens = sums.sum(0), counts.sum(0)
    return {
        "edges": edges,
        "loss": [float(s / c) if c else None for s, c in zip(total, tokens)],
        "interval": [ratio_interval(sums[:, b].tolist(), counts[:, b].tolist(), seed) for b in range(n_buckets)],
        "tokens": [int(c) for c in tokens],
        "documents": [int((counts[:, b] > 0).sum()) for b in range(n_buckets)],
    }


def sliding_window(model, docs: list[Tensor], contexts: list[int], block: int, piece: int, batch: int = 8, seed: int = 0) -> dict:
    """Per context `c`: the mean over documents of the loss of each document's last `block` tokens
    read after `c` tokens of context, its 95% interval over documents, perplexity, and each
    document's own value (`per_document`, in the order of `docs`, None where too short)."""
    rows = {}
    for c in contexts:
        usable = [d for d, ids in enumerate(docs) if len(ids) >= c + block + 1]
        if not usable:
            continue
        windows = [docs[d][len(docs[d]) - c - block - 1 :] for d in usable]
        losses = [float(nll[-block:].mean()) for nll in batched_nll(model, windows, piece, batch)]
        per_document: list[float | None] = [None] * len(docs)
        for d, value in zip(usable, losses):
            per_document[d] = value
        mean = sum(losses) / len(losses)
        rows[c] = {
            "loss": mean,
            "interval": mean_interval(losses, seed),
            "ppl": math.exp(mean),
            "documents": len(losses),
            "per_document": per_document,
        }
    return {"block": block, "contexts": rows}
