"""Running a causal LM over long inputs in pieces, through its cache, several rows at once.

Memory is bounded by the piece length and the cache (keys/values, and for In-Place TTT
models the fast-weight state), not by the input length. Works the same for plain transformers
models and converted ones: both carry their state in the cache object. Rows of different
lengths are left-padded with an attention mask and positions that start at each row's first
token, as `generate` does; the TTT layers keep padding out of their updates (`greedy` prefills each
prompt alone and joins the caches, so only its one-token steps carry a padding mask). Logits are made
only where they are read (`logits_to_keep`, the model's own option): a prompt's prefill or the
context before a scored block skips the vocabulary projection, a large share of a small model's
work.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..families.hf.cache import join_rows, joins_rows


def _parameters(model) -> dict:
    return inspect.signature(model.forward).parameters


def _forward(model, ids: Tensor, cache, mask: Tensor | None = None, positions: Tensor | None = None, keep: int = 0):
    """`ids` ``[B, n]``; `mask` ``[B, past + n]`` and `positions` ``[B, n]`` for padded rows;
    `keep` > 0: logits of the last `keep` positions only (0: all), where the model offers it."""
    params = _parameters(model)
    kw = {("cache" if "cache" in params else "past_key_values"): cache} if cache is not None else {}
    if mask is not None:
        kw.update(attention_mask=mask, position_ids=positions)
    if keep and "logits_to_keep" in params:
        kw["logits_to_keep"] = keep
    out = model(input_ids=ids, use_cache=True, **kw)
    logits = out.logits
    return (logits[:, -keep:] if keep else logits), getattr(out, "cache", None) or out.past_key_values


def _pieces(model, rows: Tensor, piece: int, last: int):
    """`(start, logits)` of each piece of the equally long rows `[B, T]`, read through the cache;
    logits of the last `last` positions only (`start` is that of the first one kept), pieces before
    them run for their cache alone."""
    cache, first = None, rows.shape[1] - last
    for start in range(0, rows.shape[1], piece):
        end = min(start + piece, rows.shape[1])
        keep = end - max(start, first)
        logits, cache = _forward(model, rows[:, start:end], cache, keep=max(keep, 1) if keep < end - start else 0)
        if keep > 0:
            yield end - keep, logits[:, -keep:]


@torch.inference_mode()
def token_nll(model, ids: Tensor, piece: int, last: int | None = None) -> Tensor:
    """Negative log-likelihood of ``ids[..., 1:]`` given what precedes each token, float32; only
    of the last `last` tokens when given (the context before them still read).

    `ids` is one sequence ``[T]`` (-> ``[T - 1]``) or a batch of equally long ones ``[B, T]``
    (-> ``[B, T - 1]``)."""
    rows = ids if ids.dim() == 2 else ids[None]
    inputs = rows[:, :-1]
    nll = []
    for start, logits in _pieces(model, inputs, piece, inputs.shape[1] if last is None else min(last, inputs.shape[1])):
        targets = rows[:, start + 1 : start + 1 + logits.shape[1]]
        nll.append(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape))
    out = torch.cat(nll, 1) if nll else rows.new_zeros(rows.shape[0], 0, dtype=torch.float32)
    return out if ids.dim() == 2 else out[0]


@torch.inference_mode()
def next_token_argmax(model, rows: Tensor, piece: int, last: int | None = None) -> Tensor:
    """The model's most likely next token after each position of the equally long rows `[B, T]`
    (after each of the last `last` positions when given)."""
    last = rows.shape[1] if last is None else min(last, rows.shape[1])
    return torch.cat([logits.argmax(-1) for _, logits in _pieces(model, rows, piece, last)], 1)


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


def _read(model, ids: Tensor, piece: int, mask: Tensor | None = None):
    """The cache after reading `ids` ``[B, n]`` in pieces, no logits made; `mask` ``[B, n]``: left padding."""
    cache = None
    for start in range(0, ids.shape[1], piece):
        end = min(start + piece, ids.shape[1])
        padding = (mask[:, :end], _positions(mask[:, :end], end - start)) if mask is not None else ()
        _, cache = _forward(model, ids[:, start:end], cache, *padding, keep=1)
    return cache


def _prefill(model, prompts: list[Tensor], ids: Tensor, mask: Tensor, piece: int):
    """The cache after each prompt's tokens but its last, rows left-padded as `ids` / `mask` are.

    Each prompt is read alone, in pieces, and the caches joined (`join_rows`): a row alone needs no
    padding mask, so attention takes its causal path. A model whose caches cannot be joined
    (sliding-window and other fixed layouts) reads the prompts as one padded batch instead."""
    lengths = [len(p) - 1 for p in prompts]
    if min(lengths) > 0 and joins_rows(model.config):
        joined = join_rows([_read(model, p[None, :-1], piece) for p in prompts], lengths)
        if joined is not None:
            return joined
    return _read(model, ids[:, :-1], piece, mask[:, :-1])


@torch.inference_mode()
def greedy(
    model, prompts: list[Tensor], max_new_tokens: int | list[int], piece: int, eos_token_id: int | Iterable[int] | None = None, pad_id: int = 0
) -> list[list[int]]:
    """Greedy continuations of `prompts` (1-D id tensors), batched: each row up to its own
    `max_new_tokens` (one count for every prompt, or one per prompt), stopping at `eos_token_id`
    (one id or several, as `generation_config.eos_token_id`; not included). The prompts are
    prefilled (`_prefill`), then every row gets one token per step; a row that is done leaves the
    batch, so a batch costs what its rows need, not its longest row times its size."""
    stops = set() if eos_token_id is None else {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts):
        raise ValueError(f"greedy: {len(budgets)} max_new_tokens for {len(prompts)} prompts")
    ids, mask = left_pad(prompts, pad_id)
    cache = _prefill(model, prompts, ids, mask, piece)
    out: list[list[int]] = [[] for _ in prompts]
    rows = torch.arange(len(prompts))  # the prompt of each row still in the batch
    left = torch.tensor(budgets)  # tokens each row may still make (0: done)
    token = ids[:, -1:]
    while True:
        going = left > 0
        if not bool(going.all()):
            if not bool(going.any()):
                break
            kept = going.nonzero()[:, 0]
            rows, left, token, mask = rows[kept], left[kept], token[kept.to(token.device)], mask[kept.to(mask.device)]
            if cache is not None:
                cache.batch_select_indices(kept.to(ids.device))
        logits, cache = _forward(model, token, cache, mask, _positions(mask, 1))
        token = logits[:, -1:].argmax(-1)
        made = token[:, 0].tolist()
        ended = [t in stops for t in made]
        for row, t, end in zip(rows.tolist(), made, ended):
            if not end:
                out[row].append(t)
        left = torch.where(torch.tensor(ended), 0, left - 1)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
    return out
