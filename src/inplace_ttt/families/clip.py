"""`clip_report`: what inference clipping keeps of a converted model's fast-weight updates on a
batch, for any model family. The doctor, `ittt eval` and the benchmarks call it, so that a
clip_tau that switches TTT off is seen wherever a model is checked or scored."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from ..clipping import UpdateRecord, summary
from . import clip_tau as clipping_set_to
from . import probe, ttt_layers


@dataclass(frozen=True)
class ClipReport:
    """The chunk updates of every TTT layer on one batch (`UpdateRecord` per layer)."""

    records: list[UpdateRecord]

    def mean_factor(self) -> float:
        """The mean clip factor over all updates of all layers (1.0: clipping kept everything)."""
        n = sum(r.updates for r in self.records)
        return sum(r.mean_factor() * r.updates for r in self.records) / n if n else 1.0

    def warnings(self) -> list[str]:
        """One line per layer where clipping removes nearly all of the update."""
        return [w for w in (r.warning() for r in self.records) if w is not None]

    def summary(self) -> str:
        return summary(self.records)

    def to_dict(self) -> dict:
        """Plain numbers per layer (for a results file)."""
        return {
            "mean_factor": self.mean_factor(),
            "warnings": self.warnings(),
            "layers": {
                str(r.layer): {
                    "tau": r.tau,
                    "updates": r.updates,
                    "mean_factor": r.mean_factor(),
                    "factor_quantiles": dict(zip(("min", "p10", "median", "p90", "max"), r.quantiles())),
                    "update_norm_median": float(r.norms.median()) if r.updates else None,
                    "relative_update_median": float(r.relative_norms().median()) if r.updates else None,
                }
                for r in self.records
            },
        }


def clip_report(model: nn.Module, batch: dict[str, Tensor] | Tensor, clip_tau: float | None = ..., clip_mode: str | None = None) -> ClipReport:
    """Run `model` on `batch` (as the doctor feeds it: ``input_ids`` [and ``attention_mask``] for a
    transformers model, ``codes`` for Moshi; a tensor alone is the ids / codes) and record what
    clipping kept of each chunk update. `clip_tau` / `clip_mode`: the setting to try (restored
    after); by default the model's own. One forward, no gradient."""
    family = probe(model)
    batch = {("codes" if batch.dim() == 3 else "input_ids"): batch} if isinstance(batch, Tensor) else dict(batch)
    layers = dict(ttt_layers(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    recording = {i: layer.record_stats for i, layer in layers.items()}
    setting = contextlib.nullcontext() if clip_tau is ... else clipping_set_to(model, clip_tau, clip_mode)
    try:
        with setting:
            for layer in layers.values():
                layer.record_stats, layer.last_updates = True, None
            family.logits(model, batch)
    finally:
        for i, layer in layers.items():
            layer.record_stats = recording[i]
    return ClipReport([layer.last_updates for layer in layers.values() if layer.last_updates is not None])
