"""Loss against position on long held-out documents, with 95% bootstrap intervals over documents.

- `bucket_edges` / `loss_by_position`: mean token loss in log-spaced position buckets
  (a token's position = how many tokens of its document precede it), from the token losses
  `batched_nll` reads;
- `sliding_window`: the paper's Fig. 2 view: the loss of a fixed final block of each document
  as the context before it grows (context 0 = the block alone); a window that is the whole
  document reuses those token losses rather than reading it twice.

Documents of the same length (all of them, for a sliding-window context) run as one batch.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from .intervals import mean_interval, ratio_interval
from .stream import token_nll

LOSS_TASK = "loss"
WINDOW_TASK = "sliding_window"
TEXT_TASKS = (LOSS_TASK, WINDOW_TASK)  # the tasks scored on held-out documents


def bucket_edges(max_len: int, first: int | None = None) -> list[int]:
    """``[0, b, 2b, 4b, ..., max_len]`` with ``b`` a power of two giving about eight buckets."""
    if first is None:
        first = max(16, 2 ** max(0, int(math.log2(max(max_len, 2))) - 7))
    edges, e = [0], first
    while e < max_len:
        edges.append(e)
        e *= 2
    return edges + [max_len]


def batched_nll(model, rows: list[Tensor], piece: int, batch: int, last: int | None = None) -> list[Tensor]:
    """`token_nll` of each row (of its last `last` tokens when given), rows of one length `batch`
    at a time; in the order given."""
    by_length = defaultdict(list)
    for i, ids in enumerate(rows):
        by_length[len(ids)].append(i)
    out: list[Tensor | None] = [None] * len(rows)
    for members in by_length.values():
        for k in range(0, len(members), batch):
            group = members[k : k + batch]
            nll = token_nll(model, torch.stack([rows[i] for i in group]), piece, last).cpu()
            for i, values in zip(group, nll):
                out[i] = values
    return out


def loss_by_position(nll: list[Tensor], edges: list[int], seed: int = 0) -> dict:
    """From each document's token losses read from its start (`batched_nll`; ``nll[d][i]`` is the
    loss of the token at position ``i + 1``): mean loss, 95% interval over documents and token
    count per bucket ``[edges[i], edges[i+1])``, the last one with its upper edge (positions past
    it are left out); and each document's summed loss and token count per bucket (`sums`,
    `counts`: what paired comparisons resample)."""
    n_buckets = len(edges) - 1
    sums = torch.zeros(len(nll), n_buckets, dtype=torch.float64)
    counts = torch.zeros(len(nll), n_buckets, dtype=torch.float64)
    bounds = torch.tensor(edges[1:-1])
    for d, values in enumerate(nll):
        values = values[: edges[-1]].double()
        positions = torch.arange(1, len(values) + 1)  # the predicted token's position: tokens before it
        bucket = torch.bucketize(positions, bounds, right=True)
        sums[d].index_add_(0, bucket, values)
        counts[d].index_add_(0, bucket, torch.ones_like(values))
    total, tokens = sums.sum(0), counts.sum(0)
    return {
        "edges": edges,
        "loss": [float(s / c) if c else None for s, c in zip(total, tokens)],
        "interval": [ratio_interval(sums[:, b].tolist(), counts[:, b].tolist(), seed) for b in range(n_buckets)],
        "tokens": [int(c) for c in tokens],
        "documents": [int((counts[:, b] > 0).sum()) for b in range(n_buckets)],
        "sums": sums.tolist(),
        "counts": counts.tolist(),
    }


def sliding_window(
    model, docs: list[Tensor], contexts: list[int], block: int, piece: int, batch: int = 8, seed: int = 0, known: list[Tensor] | None = None
) -> dict:
    """Per context `c`: the mean over documents of the loss of each document's last `block` tokens
    read after `c` tokens of context, its 95% interval over documents, perplexity, and each
    document's own value (`per_document`, in the order of `docs`, None where too short).

    `known`: each document's token losses read from its start (`batched_nll`), reused for a window
    that is the whole document instead of reading it again."""
    rows = {}
    for c in contexts:
        usable = [d for d, ids in enumerate(docs) if len(ids) >= c + block + 1]
        if not usable:
            continue
        reused = {d for d in usable if known is not None and len(docs[d]) == c + block + 1}
        read = [d for d in usable if d not in reused]
        windows = [docs[d][len(docs[d]) - c - block - 1 :] for d in read]
        scored = dict(zip(read, batched_nll(model, windows, piece, batch, last=block)))
        per_document: list[float | None] = [None] * len(docs)
        for d in usable:
            per_document[d] = float((known[d] if d in reused else scored[d])[-block:].mean())
        losses = [per_document[d] for d in usable]
        mean = sum(losses) / len(losses)
        rows[c] = {
            "loss": mean,
            "interval": mean_interval(losses, seed),
            "ppl": math.exp(mean),
            "documents": len(losses),
            "per_document": per_document,
        }
    return {"block": block, "contexts": rows}
