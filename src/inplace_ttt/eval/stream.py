"""Running a causal LM over long inputs in pieces, through its cache, several rows at once.

Memory is bounded by the piece length and the cache (keys/values, and for In-Place TTT
models the fast-weight state), not by the input length. Works the same for plain transformers
models and converted ones: both carry their state in the cache object. Rows of different
lengths are left-padded with an attention mask and positions that start at each row's first
token, as `generate` does; the TTT layers keep padding out of their updates.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward(model, ids: Tensor, cache, mask: Tensor | None = None, positions: Tensor | None = None):
    """`ids` ``[B, n]``; `mask` ``[B, past + n]`` and `positions` ``[B, n]`` for padded rows."""
    kw = {_cache_kwarg(model): cache} if cache is not None else {}
    if mask is not None:
        kw.update(attention_mask=mask, position_ids=positions)
    out = model(input_ids=ids, use_cache=True, **kw)
    return out.logits, getattr(out, "cache", None) or out.past_key_values


def _pieces(model, rows: Tensor, piece: int):
    """`(start, logits)` of each piece of the equally long rows `[B, T]`, read through the cache."""
    cache = None
    for start in range(0, rows.shape[1], piece):
        logits, cache = _forward(model, rows[:, start : start + piece], cache)
        yield start, logits


@torch.no_grad()
def token_nll(model, ids: Tensor, piece: int) -> Tensor:
    """Negative log-likelihood of ``ids[..., 1:]`` given what precedes each token, float32.

    `ids` is one sequence ``[T]`` (-> ``[T - 1]``) or a batch of equally long ones ``[B, T]``
    (-> ``[B, T - 1]``)."""
    rows = ids if ids.dim() == 2 else ids[None]
    nll = []
    for start, logits in _pieces(model, rows[:, :-1], piece):
        targets = rows[:, start + 1 : start + 1 + logits.shape[1]]
        nll.append(F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none"))
    out = torch.cat(nll, 1) if nll else rows.new_zeros(rows.shape[0], 0, dtype=torch.float32)
    return out if ids.dim() == 2 else out[0]


@torch.no_grad()
def next_token_argmax(model, rows: Tensor, piece: int) -> Tensor:
    """The model's most likely next token after each position of the equally long rows `[B, T]`."""
    return torch.cat([logits.argmax(-1) for _, logits in _pieces(model, rows, piece)], 1)


def left_pad(prompts: list[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """``[B, L]`` ids and attention mask of `prompts` left-padded to the longest."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=prompts[0].device)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = p
        mask[b, width - len(p) :] = 1
    return ids, mask


def _positions(mask: Tensor, n: int) -> Tensor:
    """Positions of the last `n` columns: tokens before them in the row (padding gets 1, as in `generate`)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, -n:]


@torch.no_grad()
def greedy(model, prompts: list[Tensor], max_new_tokens: int, piece: int, eos_token_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """Greedy continuations of `prompts` (1-D id tensors), batched: prefill in pieces, then one
    token at a time; a row stops at `eos_token_id` (not included)."""
    ids, mask = left_pad(prompts, pad_id)
    cache = None
    for start in range(0, ids.shape[1] - 1, piece):
        end = min(start + piece, ids.shape[1] - 1)
        _, cache = _forward(model, ids[:, start:end], cache, mask[:, :end], _positions(mask[:, :end], end - start))
    token, new = ids[:, -1:], []
    done = torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits, cache = _forward(model, token, cache, mask, _positions(mask, 1))
        token = logits[:, -1:].argmax(-1)
        if eos_token_id is not None:
            done |= token[:, 0] == eos_token_id
        new.append(torch.where(done, -1, token[:, 0]))
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], 1)
    rows = torch.stack(new, 1).tolist() if new else [[] for _ in prompts]
    return [row[: row.index(-1)] if -1 in row else row for row in rows]
