"""Running a causal LM over long inputs in pieces, through its cache.

Memory is bounded by the piece length and the cache (keys/values, and for In-Place TTT
models the fast-weight state), not by the input length. Works the same for plain transformers
models and converted ones: both carry their state in the cache object.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward(model, ids: Tensor, cache):
    kw = {_cache_kwarg(model): cache} if cache is not None else {}
    out = model(input_ids=ids[None], use_cache=True, **kw)
    return out.logits[0], getattr(out, "cache", None) or out.past_key_values


@torch.no_grad()
def token_nll(model, ids: Tensor, piece: int) -> Tensor:
    """Negative log-likelihood of ``ids[1:]`` given what precedes each token, `[T - 1]` float32."""
    nll, cache = [], None
    for start in range(0, len(ids) - 1, piece):
        chunk = ids[start : start + piece]
        logits, cache = _forward(model, chunk, cache)
        targets = ids[start + 1 : start + 1 + len(chunk)]
        nll.append(F.cross_entropy(logits[: len(targets)].float(), targets, reduction="none"))
    return torch.cat(nll) if nll else ids.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def greedy(model, ids: Tensor, max_new_tokens: int, piece: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy continuation of `ids`: prefill in pieces, then one token at a time."""
    cache = None
    for start in range(0, len(ids) - 1, piece):
        _, cache = _forward(model, ids[start : min(start + piece, len(ids) - 1)], cache)
    token, new = ids[-1:], []
    for _ in range(max_new_tokens):
        logits, cache = _forward(model, token, cache)
        token = logits[-1:].argmax(-1)
        if eos_token_id is not None and int(token) == eos_token_id:
            break
        new.append(int(token))
    return new
