"""Blocks of several steps through moshi's streaming attention, exactly as one long forward.

moshi's streaming attention keeps keys and values in a ring buffer of `context` steps (its
`RingKVCache`), enough for one step at a time: a block of ``n`` steps overwrites the oldest
``n - 1`` keys that its first queries still attend to. Widening each ring to
``context + n - 1`` keeps them, while the attention mask still limits every query to the
`context` steps before it; memory stays bounded by ``context + n`` whatever the input's length.
"""

from __future__ import annotations

import torch.nn as nn


def widen_kv_caches(module: nn.Module, block: int) -> int:
    """Give every streaming self-attention of `module` room for blocks of `block` steps; call it
    right after entering ``module.streaming(...)``, before the first step. Returns how many."""
    from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention

    widened = 0
    for m in module.modules():
        state = getattr(m, "_streaming_state", None)
        if not isinstance(m, StreamingMultiheadAttention) or state is None or state.kv_cache is None:
            continue
        old = state.kv_cache
        if old.end_offset.any():
            raise RuntimeError("widen_kv_caches: call it before the first streaming step")
        if m.context is None:
            continue  # attends to everything: moshi sized the ring for its weights-per-step schedule
        _, batch, heads, _, head_dim = old.cache.shape
        state.kv_cache = RingKVCache(
            batch, heads, head_dim, m.context + block - 1, respect_exec_mask=old.respect_exec_mask, device=old.cache.device, dtype=old.cache.dtype
        )
        widened += 1
    return widened
