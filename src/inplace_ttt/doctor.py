"""`doctor`: the invariants of In-Place TTT, checked on a user's own model and data.

Each check targets a failure that once cost weeks in the system this library replaces:
a wrong activation, both target factors zero (no gradient), clipping in training (TTT
a no-op), sequences of one chunk (TTT inert), frozen / LoRA-wrapped / un-optimised TTT
parameters, a low-precision fast-weight sum, a leak from the future.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from .adapters import ttt_layers, ttt_positions
from .layer import InPlaceTTTMLP, TargetGenerator
from .ops import find_segments, inplace_ttt


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def __str__(self) -> str:
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        verdict = "all checks passed" if self.ok else f"{len(self.failed())} check(s) failed: {', '.join(self.failed())}"
        return "\n".join(lines + [verdict])


def doctor(
    model: nn.Module,
    batch: dict[str, Tensor] | Tensor,
    base_model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    training: bool | None = None,
) -> Report:
    """Run the checks on `model` (a converted transformers causal LM) with `batch`
    (``input_ids`` and optionally ``attention_mask`` / ``position_ids``).

    base_model: the unconverted model, for the warm-start and activation checks.
    optimizer: the optimizer that will train `model`, to find TTT parameters it misses.
    training: whether `batch` is training data (checks clipping and sequence length);
        defaults to ``model.training``.
    """
    batch = {"input_ids": batch} if isinstance(batch, Tensor) else dict(batch)
    training = model.training if training is None else training
    report = Report()
    layers = dict(ttt_layers(model))
    if not layers:
        report.add("TTT layers", False, "the model has no In-Place TTT layers: convert it first")
        return report
    report.add("TTT layers", True, f"layers {sorted(layers)}")
    _check_parameters(report, model, layers, optimizer)
    _check_lengths(report, layers, batch, training)
    _check_clipping(report, layers, training)
    _check_precision(report, layers)
    if base_model is not None:
        _check_activation(report, layers, base_model)
        _check_warm_start(report, model, layers, base_model, batch)
    if all(isinstance(layer.ttt, TargetGenerator) for layer in layers.values()):
        _check_gradients(report, model, layers, batch)
        _check_causality(report, model, batch)
    return report


def _ttt_params(layers: dict[int, InPlaceTTTMLP]) -> dict[str, nn.Parameter]:
    """The new parameters of each TTT layer (target generator), by readable name."""
    return {f"layer {i} {name}": p for i, layer in layers.items() for name, p in layer.ttt.named_parameters()}


def _check_parameters(report, model, layers, optimizer) -> None:
    wrapped = {f"layer {i}" for i, layer in layers.items() if not isinstance(layer.ttt, TargetGenerator)}
    wrapped |= {f"layer {i}" for i, layer in layers.items() for m in layer.ttt.modules() if hasattr(m, "lora_A")}
    report.add(
        "TTT params not LoRA-wrapped",
        not wrapped,
        f"{sorted(wrapped)} wrap the target generator; train TTT parameters in full" if wrapped else "conv and W_target are plain parameters",
    )
    params = _ttt_params(layers)
    frozen = [n for n, p in params.items() if not p.requires_grad]
    report.add("TTT params trainable", not frozen, f"frozen: {frozen}" if frozen else f"{len(params)} parameters require grad")
    if optimizer is not None:
        in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
        down = {f"layer {i} {layer.spec.down}.weight": layer.down.weight for i, layer in layers.items()}
        missing = [n for n, p in {**params, **down}.items() if p.requires_grad and id(p) not in in_opt]
        report.add("TTT params in optimizer", not missing, f"missing: {missing}" if missing else "every trainable TTT parameter is optimised")


def _check_lengths(report, layers, batch, training) -> None:
    ids = batch["input_ids"]
    pos = ttt_positions(ids.shape[0], ids.shape[1], batch.get("attention_mask"), batch.get("position_ids"), 0, ids.device)
    C = min(layer.chunk_size for layer in layers.values())
    seg = find_segments(pos, *pos.shape, C, pos.device)
    doc = seg.doc_start.long().cumsum(1)  # document number within the row (first counts as 0 or 1)
    lengths = [int((doc[b] == d)[seg.valid[b]].sum()) for b in range(pos.shape[0]) for d in doc[b][seg.valid[b]].unique()]
    longest = max(lengths, default=0)
    ok = longest >= 2 * C or not training
    detail = f"longest document {longest} tokens, chunk {C}"
    if longest < 2 * C:
        detail += ": fewer than 2 chunks, nothing precedes chunk 0 so TTT is inert" + ("" if training else " (fine for inference)")
    report.add("sequences span 2+ chunks", ok, detail)


def _check_clipping(report, layers, training) -> None:
    clipped = {i: layer.clip_tau for i, layer in layers.items() if layer.clip_tau is not None}
    if training and clipped:
        report.add("no clipping in training", False, f"clip_tau set on layers {clipped}: it starves TTT of gradient; set it for inference only")
    else:
        report.add("no clipping in training", True, f"clip_tau {clipped or 'off'}{'' if training else ' (inference)'}")


def _check_precision(report, layers) -> None:
    layer = next(iter(layers.values()))
    dtype = layer.down.weight.dtype
    z = torch.ones(1, 2 * layer.chunk_size, 2, dtype=dtype)
    _, state = inplace_ttt(z, z[..., :1], None, 1.0, layer.chunk_size, output_final_state=True)
    report.add("fast-weight sum precision", state.dtype in (torch.float32, torch.float64), f"{dtype} weights accumulate in {state.dtype}")


def _check_activation(report, layers, base_model) -> None:
    from .adapters import decoder_layers

    base_layers = decoder_layers(base_model)[1]
    bad, worst = [], 0.0
    for idx, layer in layers.items():
        base_mlp = base_layers[idx].mlp
        w = layer.down.weight
        x = torch.randn(2, 3, w.shape[0], dtype=w.dtype, device=w.device, generator=torch.Generator().manual_seed(idx))
        with torch.no_grad():
            diff = (layer.spec.hidden(layer, x) - layer.spec.hidden(base_mlp, x.to(base_mlp.down_proj.weight.dtype)).to(x.dtype)).abs().max().item()
        act, base_act = getattr(layer, layer.spec.act), getattr(base_mlp, layer.spec.act)
        worst = max(worst, diff)
        if diff > _tolerance(w.dtype) or type(act) is not type(base_act):
            bad.append(f"layer {idx}: {type(act).__name__} vs {type(base_act).__name__}, |dz| {diff:.1e}")
    report.add("activation matches the original MLP", not bad, "; ".join(bad) if bad else f"max |z - z_base| {worst:.1e}")


def _check_warm_start(report, model, layers, base_model, batch) -> None:
    saved = {i: layer.ttt_lr for i, layer in layers.items()}
    try:
        base_logits = _logits(base_model, batch)
        on = (_logits(model, batch) - base_logits).abs().max().item()
        for layer in layers.values():
            layer.ttt_lr = 0.0
        off = (_logits(model, batch) - base_logits).abs().max().item()
    finally:
        for i, layer in layers.items():
            layer.ttt_lr = saved[i]
    tol = _tolerance(next(iter(layers.values())).down.weight.dtype)
    fresh = all(layer.ttt.starts_at_zero() for layer in layers.values())
    ok = off <= tol and (on <= tol or not fresh)
    detail = f"max |logit - base| {on:.1e} with TTT, {off:.1e} with TTT off (tolerance {tol:.0e})"
    if off > tol:
        detail += ": the pretrained weights or activation differ from the base model"
    elif fresh and on > tol:
        detail += ": a freshly converted model must compute what the base model did"
    report.add("warm start", ok, detail)


def _check_gradients(report, model, layers, batch) -> None:
    down = {f"layer {i} {layer.spec.down}.weight": layer.down.weight for i, layer in layers.items()}
    params = {n: p for n, p in {**_ttt_params(layers), **down}.items() if p.requires_grad}
    if not params:
        report.add("TTT gradients", False, "no TTT parameter requires grad")
        return
    loss = _loss(model, batch)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    norms = {n: (g.float().norm().item() if g is not None else 0.0) for n, g in zip(params, grads)}
    bad_numbers = [n for n, v in norms.items() if v != v or v in (float("inf"),)]
    dead = []
    for idx, layer in layers.items():
        conv, target = norms.get(f"layer {idx} conv_weight", 0.0), norms.get(f"layer {idx} target_weight", 0.0)
        if conv == 0.0 and target == 0.0:
            why = ""
            if layer.ttt.blocks_gradient():
                why = " (both conv and W_target are zero: V = 0 and neither can get gradient)"
            dead.append(f"layer {idx}{why}")
    shown = ", ".join(f"{n} {v:.1e}" for n, v in norms.items())
    if bad_numbers:
        report.add("TTT gradients", False, f"non-finite gradient in {bad_numbers}")
    elif dead:
        report.add("TTT gradients", False, f"no gradient reaches the targets of {dead}; norms: {shown}")
    else:
        report.add("TTT gradients", True, f"before clipping: {shown}")


def _check_causality(report, model, batch) -> None:
    ids = batch["input_ids"]
    t = ids.shape[1] - 1
    changed = dict(batch, input_ids=ids.clone())
    changed["input_ids"][:, t] = (ids[:, t] + 1) % max(int(ids.max()) + 1, 2)
    diff = (_logits(model, changed)[:, :t] - _logits(model, batch)[:, :t]).abs().max().item() if t > 0 else 0.0
    report.add("causality", diff == 0.0, f"changing the last token moves earlier logits by {diff:.1e}")


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float64) else 5e-2


def _logits(model, batch) -> Tensor:
    with torch.no_grad():
        return model(**batch, use_cache=False).logits.float()


def _loss(model, batch) -> Tensor:
    ids = batch["input_ids"]
    labels = ids.clone()
    if batch.get("attention_mask") is not None:
        labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    return model(**batch, labels=labels, use_cache=False).loss
