"""`doctor`: the invariants of In-Place TTT, checked on a user's own model and data.

Each check targets a failure that once cost weeks in the system this library replaces:
a wrong activation, both target factors zero (no gradient), clipping in training (TTT
a no-op), sequences of one chunk (TTT inert), frozen / LoRA-wrapped / un-optimised TTT
parameters, a low-precision fast-weight sum, a leak from the future; and two that cost a
researcher a run each: inference clipping that removes nearly all of every update, and fast
weights that stay negligible (inert) or grow past what the model can bear (harmful).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from ..families import probe, ttt_layers
from ..families.clip import clip_report
from ..families.record import describe, may_change, split_training, trained_steps
from ..finite import nonfinite_tensors
from ..health import Settings, verdict
from ..layer import InPlaceTTTMLP, TargetGenerator, ttt_switched_off
from ..ops import find_segments, inplace_ttt


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # passes, but worth a look (printed as WARN)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str, *, warning: bool = False) -> None:
        self.checks.append(Check(name, bool(ok), detail, warning))

    def __str__(self) -> str:
        width = max((len(c.name) for c in self.checks), default=0)
        status = lambda c: "FAIL" if not c.ok else "WARN" if c.warning else "PASS"  # noqa: E731
        lines = [f"{status(c)}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        verdict = "all checks passed" if self.ok else f"{len(self.failed())} check(s) failed: {', '.join(self.failed())}"
        return "\n".join(lines + [verdict])


def doctor(
    model: nn.Module,
    batch: dict[str, Tensor] | Tensor,
    base_model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    training: bool | None = None,
    fresh: bool | None = None,
    ttt_params_max_grad_norm: float | None = None,
    steps: int | None = None,
) -> Report:
    """Run the checks on `model` (a converted transformers causal LM, or a converted moshi
    `LMModel`) with `batch` (transformers: ``input_ids`` and optionally ``attention_mask`` /
    ``position_ids``, or the ids alone; Moshi: ``codes`` ``[B, K, T]``).

    base_model: the unconverted model, for the warm-start, activation and frozen-weight checks.
    optimizer: the optimizer that will train `model`, to find TTT parameters it misses.
    training: whether `batch` is training data (checks clipping and sequence length);
        defaults to ``model.training``.
    fresh: whether `model` is a fresh conversion, which must compute what the unconverted model
        did (without `base_model`: what it computes with TTT off); defaults to: its settings
        record no training (`families.record`) and every target is zero now. (A "fresh" model
        with non-zero targets is the seed's random init.) A trained model must keep the weights
        its recorded modes froze and, with TTT off, compute what `base_model` computes holding
        the weights it trained.
    ttt_params_max_grad_norm: the run clips the TTT parameters as their own group at this norm
        (`train.ttt_params_max_grad_norm`): a global norm they dominate is then reported, not warned.
    steps: the optimizer steps the run will take; with `optimizer`, a fresh model's fast weights
        are projected that far (`_check_state`) to say whether TTT would stay inert.
    """
    family = probe(model)
    batch = {("codes" if batch.dim() == 3 else "input_ids"): batch} if isinstance(batch, Tensor) else dict(batch)
    training = model.training if training is None else training
    report = Report()
    layers = dict(ttt_layers(model))
    if not layers:
        report.add("TTT layers", False, "the model has no In-Place TTT layers: convert it first")
        return report
    report.add("TTT layers", True, f"layers {sorted(layers)}")
    _check_finite(report, model, base_model)
    _check_parameters(report, model, layers, optimizer)
    _check_lengths(report, layers, family.positions(batch), training)
    _check_clipping(report, model, layers, batch, training)
    _check_precision(report, layers)
    record = split_training(family.settings(model))[1]
    if fresh is None:
        fresh = trained_steps(record) == 0 and all(isinstance(layer.ttt, TargetGenerator) and layer.ttt.starts_at_zero() for layer in layers.values())
    if base_model is not None and _check_base_shape(report, layers, base_model, family):
        changed = _check_frozen_weights(report, model, layers, base_model, record, fresh)
        with _borrowed(base_model, model, changed):  # the base with the weights the training changed
            _check_activation(report, layers, base_model, family)
            _check_warm_start(report, model, layers, base_model, batch, family, fresh, len(changed))
    elif fresh:
        _check_warm_start(report, model, layers, None, batch, family, fresh)
    if all(isinstance(layer.ttt, TargetGenerator) for layer in layers.values()):
        _check_gradients(report, model, layers, batch, family, ttt_params_max_grad_norm is not None)
        gap = family.causality_gap(model, batch)
        report.add("causality", gap == 0.0, f"changing a later step moves earlier logits by {gap:.1e}")
        _check_state(report, model, layers, batch, family, fresh, optimizer, steps)
    return report


def _ttt_params(layers: dict[int, InPlaceTTTMLP]) -> dict[str, nn.Parameter]:
    """The new parameters of each TTT layer (target generator), by readable name."""
    return {f"layer {i} {name}": p for i, layer in layers.items() for name, p in layer.ttt.named_parameters()}


def _check_finite(report, model, base_model) -> None:
    """Weights holding a NaN or an infinity (a diverged run's) make every other number meaningless."""
    models = {"": model} if base_model is None else {"": model, "base ": base_model}
    bad = [f"{which}{entry}" for which, m in models.items() for entry in nonfinite_tensors(m.state_dict().items())]
    report.add(
        "weights finite", not bad, f"non-finite (NaN or infinity): {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}" if bad else "no NaN or infinity"
    )


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


def _check_lengths(report, layers, pos, training) -> None:
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


def _check_clipping(report, model, layers, batch, training) -> None:
    clipped = {i: layer.clip_tau for i, layer in layers.items() if layer.clip_tau is not None}
    if training and clipped:
        report.add("no clipping in training", False, f"clip_tau set on layers {clipped}: it starves TTT of gradient; set it for inference only")
        return
    report.add("no clipping in training", True, f"clip_tau {clipped or 'off'}{'' if training else ' (inference)'}")
    if clipped:
        with warnings.catch_warnings():  # the layers' own warning: said here, in the report
            warnings.simplefilter("ignore", RuntimeWarning)
            kept = clip_report(model, batch)
        lost = kept.warnings()
        detail = f"{kept.summary()}" + (f"; {lost[0]}" if lost else "")
        report.add("clipping keeps the updates", True, detail, warning=bool(lost))


def _check_state(report, model, layers, batch, family, fresh: bool, optimizer, steps: int | None) -> None:
    """Whether TTT is inert or harmful here (`inplace_ttt.health`), in one line. A trained model:
    its fast weights on this batch, and its loss with TTT against TTT off. A fresh conversion
    (fast weights exactly zero): with the run's optimizer and step count, the fast weights after
    `steps` steps if every TTT parameter moved its learning rate each step the way its first
    gradient points, which is about as far as AdamW can move it (a warmup moves it less). That
    bound can say inert, not harmful: measured on the demo (150 steps), it projects 10 x
    ||W_down|| where the run reaches 0.13 x."""
    layer = next(iter(layers.values()))
    rates = _learning_rates(optimizer, layers)
    settings = Settings(layer.ttt_lr, layer.chunk_size, max(rates.values()) if rates else None, layer.clip_tau)
    if not fresh:
        with _recording(layers), torch.no_grad():
            on = float(family.loss(model, batch))
        ratios = {i: t.last_stats.get("fast_ratio", 0.0) for i, t in layers.items()}
        with torch.no_grad(), ttt_switched_off(layers.values()):
            off = float(family.loss(model, batch))
        found = verdict(ratios, settings, after="on this batch", loss_gain=off - on)
        detail = f"fast weights reach <= {max(ratios.values()):.3g} x ||W_down||; loss {on - off:+.3g} nats with TTT against TTT off"
    elif rates and steps:
        with _recording(layers), _moved(model, layers, batch, family, rates, steps):
            family.logits(model, batch)
            ratios = {i: t.last_stats.get("fast_ratio", 0.0) for i, t in layers.items()}
        found = verdict(ratios, settings, after=f"after {steps} steps (projected)")
        if found is not None and found[0] == "harmful":  # an upper bound says nothing of harm: the demo's projects to 10 x, reaches 0.13 x
            found = None
        detail = f"projected after {steps} steps: fast weights reach <= {max(ratios.values()):.3g} x ||W_down|| (an upper bound)"
    else:
        return
    report.add("TTT neither inert nor harmful", True, found[1] if found else detail, warning=found is not None)


def _learning_rates(optimizer, layers) -> dict[int, float]:
    """`id(parameter) -> learning rate` for each TTT parameter the optimizer holds."""
    if optimizer is None:
        return {}
    ids = {id(p) for p in _ttt_params(layers).values()}
    return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"] if id(p) in ids}


@contextlib.contextmanager
def _recording(layers):
    """The layers record their fast-weight statistics for a block."""
    before = {i: t.record_stats for i, t in layers.items()}
    try:
        for t in layers.values():
            t.record_stats = True
        yield
    finally:
        for i, t in layers.items():
            t.record_stats = before[i]


@contextlib.contextmanager
def _moved(model, layers, batch, family, rates: dict[int, float], steps: int):
    """The TTT parameters moved ``steps * lr`` against the sign of their gradient on `batch`, for a block."""
    params = [p for p in _ttt_params(layers).values() if id(p) in rates]
    grads = torch.autograd.grad(family.loss(model, batch), params, allow_unused=True)
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p.sub_(steps * rates[id(p)] * g.sign())
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _check_precision(report, layers) -> None:
    layer = next(iter(layers.values()))
    dtype = layer.down.weight.dtype
    z = torch.ones(1, 2 * layer.chunk_size, 2, dtype=dtype)
    _, state = inplace_ttt(z, z[..., :1], None, 1.0, layer.chunk_size, output_final_state=True)
    report.add("fast-weight sum precision", state.dtype in (torch.float32, torch.float64), f"{dtype} weights accumulate in {state.dtype}")


def _check_base_shape(report, layers, base_model, family) -> bool:
    """Whether `base_model` can be what `model` was converted from: an MLP of the same parts and
    shape at every TTT layer (another architecture, or another size, was a traceback deep in the checks)."""
    bad = []
    for idx, layer in layers.items():
        try:
            base_mlp = family.original_mlp(base_model, idx)
        except (IndexError, AttributeError, ValueError) as e:
            bad.append(f"layer {idx}: the base has none ({type(e).__name__})")
            continue
        missing = layer.spec.missing(base_mlp)
        if missing:
            bad.append(f"layer {idx}: the base's {type(base_mlp).__name__} lacks {missing}")
        elif getattr(base_mlp, layer.spec.down).weight.shape != layer.down.weight.shape:
            bad.append(f"layer {idx}: down projection {list(getattr(base_mlp, layer.spec.down).weight.shape)} vs {list(layer.down.weight.shape)}")
    detail = "; ".join(bad) + ": pass the model this one was converted from" if bad else f"an MLP of the same shape at layers {sorted(layers)}"
    report.add("base model matches", not bad, detail)
    return not bad


def _check_activation(report, layers, base_model, family) -> None:
    bad, worst = [], 0.0
    for idx, layer in layers.items():
        base_mlp = family.original_mlp(base_model, idx)
        w = layer.down.weight
        x = torch.randn(2, 3, w.shape[0], generator=torch.Generator().manual_seed(idx)).to(dtype=w.dtype, device=w.device)
        base_w = getattr(base_mlp, layer.spec.down).weight
        with torch.no_grad():
            base_z = layer.spec.hidden(base_mlp, x.to(dtype=base_w.dtype, device=base_w.device)).to(dtype=x.dtype, device=x.device)
            diff = (layer.spec.hidden(layer, x) - base_z).abs().max().item()
        act, base_act = getattr(layer, layer.spec.act), getattr(base_mlp, layer.spec.act)
        worst = max(worst, diff)
        same = act is base_act or (isinstance(act, nn.Module) and type(act) is type(base_act))
        if diff > _tolerance(w.dtype) or not same:
            bad.append(f"layer {idx}: {_name(act)} vs {_name(base_act)}, |dz| {diff:.1e}")
    report.add("activation matches the original MLP", not bad, "; ".join(bad) if bad else f"max |z - z_base| {worst:.1e}")


def _check_frozen_weights(report, model, layers, base_model, record, fresh: bool) -> list[str]:
    """Compare every pretrained weight with the base's; those the training was not allowed to
    change must be equal. Returns the names of the weights that differ and were allowed to."""
    own = dict(model.named_parameters())
    ttt_down = {name for name, p in own.items() if any(p is layer.down.weight for layer in layers.values())}
    differ = []
    for name, p in base_model.named_parameters():
        if name in own and not torch.equal(own[name].detach(), p.detach().to(device=own[name].device, dtype=own[name].dtype)):
            differ.append(name)
    known = trained_steps(record) > 0
    allowed = [n for n in differ if known and may_change(record, n, ttt_down)] if known else ([] if fresh else differ)
    unexpected = [n for n in differ if n not in allowed]
    shown = lambda names: f"{names[:4]}{' ...' if len(names) > 4 else ''}"  # noqa: E731
    if unexpected:
        why = f"the training ({describe(record)}) did not train them" if known else "a fresh conversion changes no weight"
        report.add("frozen weights unchanged", False, f"{len(unexpected)} weight(s) differ from the base but {why}: {shown(unexpected)}")
    elif known:
        report.add("frozen weights unchanged", True, f"trained ({describe(record)}): {len(differ)} weight(s) differ from the base, all ones it trained")
    elif differ:
        report.add(
            "frozen weights unchanged",
            True,
            warning=True,
            detail=f"{len(differ)} weight(s) differ from the base {shown(differ)}, and the checkpoint does not say how it was trained "
            "(ittt train records it), so which were meant to is not checked",
        )
    else:
        report.add("frozen weights unchanged", True, "every pretrained weight equals the base's")
    return allowed


@contextlib.contextmanager
def _borrowed(base_model: nn.Module, model: nn.Module, names: list[str]):
    """`base_model` with `model`'s values of the weights `names`, for a block (restored after)."""
    own, base = dict(model.named_parameters()), dict(base_model.named_parameters())
    saved = {}
    try:
        for name in names:
            saved[name] = base[name].data
            base[name].data = own[name].detach().to(device=saved[name].device, dtype=saved[name].dtype)
        yield
    finally:
        for name, data in saved.items():
            base[name].data = data


def _check_warm_start(report, model, layers, base_model, batch, family, fresh: bool, n_changed: int = 0) -> None:
    """Fresh: the model computes what its base computes, with and without TTT (without a base
    model: a fresh conversion with TTT off is the base model, by construction, so TTT on against
    TTT off). Trained: with TTT off it computes what the base computes holding the `n_changed`
    weights the training changed."""
    on_logits = family.logits(model, batch)
    with ttt_switched_off(layers.values()):
        off_logits = family.logits(model, batch)
    tol = _tolerance(next(iter(layers.values())).down.weight.dtype)
    if base_model is None:
        on = (on_logits - off_logits).abs().max().item()
        detail = f"max |logit with TTT - logit with TTT off| {on:.1e} (tolerance {tol:.0e})"
        if on > tol:
            detail += ": a freshly converted model must compute what the base model did (are the targets initialised at random?)"
        report.add("warm start", on <= tol, detail)
        return
    base_logits = family.logits(base_model, batch)
    on, off = ((x - base_logits).abs().max().item() for x in (on_logits, off_logits))
    if not fresh:
        detail = f"max |logit - base| {off:.1e} with TTT off, the base holding the {n_changed} trained weight(s) (tolerance {tol:.0e}); {on:.1e} with TTT on"
        if off > tol:
            detail += ": the model's own computation differs from its base model's (activation, wiring)"
        report.add("TTT off reproduces the base", off <= tol, detail)
        return
    ok = off <= tol and on <= tol
    detail = f"max |logit - base| {on:.1e} with TTT, {off:.1e} with TTT off (tolerance {tol:.0e})"
    if off > tol:
        detail += ": the pretrained weights or activation differ from the base model"
    elif on > tol:
        detail += ": a freshly converted model must compute what the base model did (are the targets initialised at random?)"
    report.add("warm start", ok, detail)


def _check_gradients(report, model, layers, batch, family, clipped_apart: bool) -> None:
    down = {f"layer {i} {layer.spec.down}.weight": layer.down.weight for i, layer in layers.items()}
    params = {n: p for n, p in {**_ttt_params(layers), **down}.items() if p.requires_grad}
    if not params:
        report.add("TTT gradients", False, "no TTT parameter requires grad")
        return
    ttt_ids = {id(p) for p in _ttt_params(layers).values()}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in {id(q) for q in params.values()}]
    loss = family.loss(model, batch)
    grads = torch.autograd.grad(loss, [*params.values(), *others], allow_unused=True)
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
    if bad_numbers:
        return
    squares = [0.0, 0.0]  # the TTT parameters', everything else's
    for p, g in zip([*params.values(), *others], grads):
        if g is not None:
            squares[0 if id(p) in ttt_ids else 1] += g.float().pow(2).sum().item()
    share = squares[0] / max(sum(squares), 1e-30)
    detail = f"the TTT parameters hold {share:.1%} of the squared gradient norm (global norm {sum(squares) ** 0.5:.1e})"
    dominant = share > 0.9 and squares[1] > 0 and not clipped_apart
    if clipped_apart:
        detail += "; the run clips them as their own group"
    elif dominant:
        detail += (
            ": one global clip would scale every other parameter's update by as much as theirs; "
            "clip the TTT parameters on their own (train.ttt_params_max_grad_norm, ittt train's default) or start W_target smaller (target_init: diagonal)"
        )
    report.add("gradient balance", True, detail, warning=dominant)


def _name(activation) -> str:
    """An activation module's class name (`SiLU`), or a function's name (moshi's `silu`)."""
    return type(activation).__name__ if isinstance(activation, nn.Module) else getattr(activation, "__name__", repr(activation))


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float64) else 5e-2
