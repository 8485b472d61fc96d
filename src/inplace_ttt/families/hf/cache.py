"""Fast-weight state inside a transformers `Cache`.

`generate()` and hand-written incremental loops already carry one cache object from step to
step and call its `reorder_cache` / `batch_*` methods when beams move; the per-layer
`FastWeightState`s ride along in that object. Any cache class is adopted in place by
swapping in a subclass that adds the states (so the cache `generate()` creates, dynamic or
static, works unchanged), and operations that would need to roll fast weights back (`crop`,
used by assisted decoding) fail loudly instead of silently keeping future updates.
"""

from __future__ import annotations

import torch

from ...ops.state import FastWeightState

_ADOPTED: dict[type, type] = {}


class FastWeightCacheMixin:
    """Adds `ttt_states: {layer_idx: FastWeightState}` to a transformers cache."""

    ttt_states: dict[int, FastWeightState]

    def ttt_state(self, layer_idx: int) -> FastWeightState:
        state = self.ttt_states.get(layer_idx)
        if state is None:
            state = self.ttt_states[layer_idx] = FastWeightState()
        return state

    def reset(self):
        super().reset()
        self.ttt_states.clear()

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        for state in self.ttt_states.values():
            state.reorder(beam_idx)

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        for state in self.ttt_states.values():
            state.reorder(torch.arange(state.batch_size).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        for state in self.ttt_states.values():
            state.reorder(indices)

    def crop(self, tokens_to_remove: int):
        if tokens_to_remove > 0 and any(s.initialized for s in self.ttt_states.values()):
            raise NotImplementedError(
                "In-Place TTT fast weights cannot be rolled back, so this cache cannot be cropped: "
                "assisted/speculative decoding and other rollbacks are not supported with TTT layers"
            )
        super().crop(tokens_to_remove)

    @property
    def is_croppable(self) -> bool:
        return False


def joins_rows(config) -> bool:
    """Whether the caches a model of `config` fills by itself (transformers' `DynamicCache` for its
    layer types) are ones `join_rows` joins: full-attention `DynamicLayer`s only."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def join_rows(caches: list, lengths: list[int]):
    """The one-row caches `caches` (of `lengths` tokens) as one batch, in place of the first: each row's
    keys and values left-padded with zeros to the longest (the caller's attention mask hides those
    columns, as left padding is hidden), fast-weight states stacked row by row.

    Why: a row prefilled alone needs no padding mask, so attention takes its causal path, which on a
    CPU costs about a quarter less than a padded batch's masked one (`benchmarks/eval.py`). Only a
    growing full-attention cache (transformers' `DynamicCache` of `DynamicLayer`s) is joined this
    way; for any other (sliding-window, static, quantized, offloaded) this returns None and the
    caller prefills a padded batch."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if not all(isinstance(c, DynamicCache) and not c.offloading and all(type(layer) is DynamicLayer for layer in c.layers) for c in caches):
        return None
    if len({len(c.layers) for c in caches}) != 1 or any(c.get_seq_length() != n for c, n in zip(caches, lengths)):
        return None
    width = max(lengths)
    joined = caches[0]
    for i, layer in enumerate(joined.layers):
        for name in ("keys", "values"):
            rows = [getattr(c.layers[i], name) for c in caches]
            setattr(layer, name, torch.cat([torch.nn.functional.pad(r, (0, 0, width - r.shape[-2], 0)) for r in rows]))
    states = [getattr(c, "ttt_states", {}) for c in caches]
    if states[0]:
        joined.ttt_states = {k: FastWeightState.joined([s[k] for s in states]) for k in states[0]}
    return joined


def adopt_cache(cache) -> FastWeightCacheMixin:
    """Give `cache` fast-weight states (in place; a no-op if it has them). Returns it."""
    if isinstance(cache, FastWeightCacheMixin):
        return cache
    cls = type(cache)
    if cls not in _ADOPTED:
        _ADOPTED[cls] = type(f"FastWeight{cls.__name__}", (FastWeightCacheMixin, cls), {"__module__": __name__})
    cache.__class__ = _ADOPTED[cls]
    cache.ttt_states = {}
    return cache
