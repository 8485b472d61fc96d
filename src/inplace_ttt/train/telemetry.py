"""TTT telemetry for training: what each TTT layer is doing, logged with the loss.

Per TTT layer, averaged over the steps since the last log:
- ``grad_conv``, ``grad_target``, ``grad_down``: gradient norms of the convolution, `W_target`
  and the down projection, read before gradient clipping (the system this library replaces
  read them after clipping and always saw 1.0);
- ``fast_ratio``: ``lr ||sum dW|| / ||W0||`` at the end of a row, how far the fast weight moved;
- ``clipped_share``: the share of chunk updates that clipping scaled down (0 unless clipping
  was asked for in training), and ``clip_factor``: the mean share of an update clipping kept.

For the whole model: ``ttt/grad_norm`` (all TTT parameters, before clipping), ``ttt/grad_share``
(their share of the squared global gradient norm: near 1, the TTT parameters decide the global
clipping), ``clip_scale`` (the factor clipping multiplied the other parameters' gradients by:
at 1/400 they train at 1/400 of their learning rate) and ``ttt/clip_scale`` (the TTT
parameters' factor), ``ttt/loss_gain`` (the loss of the step's batch with TTT off minus with it
on, measured about every `GAIN_EVERY` steps, on a log step: one more forward, no gradient),
plus any parts of the loss the trained module reports (Moshi's ``text_loss`` and ``audio_loss``).

From these `TTTTelemetry.state` says once, in one line, when TTT is inert or harmful
(`inplace_ttt.health`): inert is judged once the warmup is over (and at least `INERT_AFTER`
steps in, or at the last step), harmful at any log.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ..finite import finite_json
from ..health import Settings, verdict
from ..layer import InPlaceTTTMLP, is_ttt_param

INERT_AFTER = 8  # steps: the fast weights start at zero (V = 0) and the demo's pass 2% of W_down by step 7
GAIN_EVERY = 10  # steps between two measurements of the loss with TTT off (one forward each)


class TTTTelemetry:
    """Collects numbers between logs; `flush` returns their means and starts over."""

    def __init__(self, layers: dict[int, InPlaceTTTMLP]):
        self.layers = layers
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self.said: set[str] = set()  # the verdicts said already (each once per run)

    def gain_due(self, step: int, log_step: bool, logging_steps: int) -> bool:
        """Whether step `step` (1-based) measures the loss with TTT off: a log step that is the run's
        first, or the first since a multiple of `GAIN_EVERY`. A function of the step alone, so a
        resumed run measures at the steps the uninterrupted one does."""
        previous = (step - 1) // logging_steps * logging_steps  # the log step before this one (0: none)
        return bool(self.layers) and log_step and (previous == 0 or step // GAIN_EVERY > previous // GAIN_EVERY)

    def state(self, logs: dict, step: int, judge_inert: bool, ttt_params_learning_rate: float | None) -> str | None:
        """The one line saying TTT is inert or harmful, the first time it is (None otherwise)."""
        ratios = {i: logs[f"ttt/layer{i}/fast_ratio"] for i in self.layers if f"ttt/layer{i}/fast_ratio" in logs}
        if not ratios:
            return None
        layer = next(iter(self.layers.values()))
        settings = Settings(layer.ttt_lr, layer.chunk_size, ttt_params_learning_rate, layer.clip_tau)
        found = verdict(ratios, settings, after=f"after {step} steps", loss_gain=logs.get("ttt/loss_gain"))
        if found is None or found[0] in self.said or (found[0] == "inert" and not judge_inert):
            return None
        self.said.add(found[0])
        return found[1]

    def enable(self) -> None:
        for layer in self.layers.values():
            layer.record_stats = True

    def add(self, key: str, value: float) -> None:
        self._sums[key] += value
        self._counts[key] += 1

    @torch.no_grad()
    def record_gradients(self, norms: tuple[float, float]) -> None:
        """Call after the backward of a step and before clipping, with the `group_norms` of its gradients."""
        for idx, layer in self.layers.items():
            for name, param in (("conv", layer.ttt.conv_weight), ("target", layer.ttt.target_weight), ("down", layer.down.weight)):
                if param is not None and param.grad is not None:
                    self.add(f"ttt/layer{idx}/grad_{name}", param.grad.float().norm().item())
        if self.layers:
            ttt, other = norms
            self.add("ttt/grad_norm", ttt)
            self.add("ttt/grad_share", ttt**2 / max(ttt**2 + other**2, 1e-30))

    def record_forward(self) -> None:
        """Call after a training step: the layers' statistics of their last forward."""
        for idx, layer in self.layers.items():
            for key, value in layer.last_stats.items():
                self.add(f"ttt/layer{idx}/{key}", value)

    def flush(self) -> dict[str, float]:
        logs = {k: self._sums[k] / self._counts[k] for k in sorted(self._sums)}
        self._sums.clear()
        self._counts.clear()
        return logs


@torch.no_grad()
def group_norms(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> tuple[float, float]:
    """Gradient norms of the TTT parameters and of all the others."""
    groups: tuple[list, list] = ([], [])
    for name, p in named_parameters:
        if p.grad is not None:
            groups[0 if is_ttt_param(name) else 1].append(p.grad)
    ttt, other = (float(torch.nn.utils.get_total_norm(g)) if g else 0.0 for g in groups)
    return ttt, other


def summary_line(logs: dict, step: int, max_steps: int) -> str:
    """One readable line for a log: the engine's numbers as they are, the `ttt/*` ones digested
    (their share of the gradient, their own clipping, the largest `fast_ratio`); every number
    stays in TensorBoard and metrics.jsonl."""
    parts = [f"step {step}/{max_steps}"]
    for key, value in logs.items():
        if not key.startswith("ttt/") and key != "total_flos":
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    ttt = []
    if "ttt/grad_share" in logs:
        ttt.append(f"grad_share {logs['ttt/grad_share']:.3g}")
    if "ttt/clip_scale" in logs:
        ttt.append(f"clip_scale {logs['ttt/clip_scale']:.3g}")
    fast = [v for k, v in logs.items() if k.startswith("ttt/layer") and k.endswith("/fast_ratio")]
    if fast:
        ttt.append(f"fast_ratio <= {max(fast):.3g}")
    kept = [v for k, v in logs.items() if k.startswith("ttt/layer") and k.endswith("/clip_factor")]
    if kept and min(kept) < 1:
        ttt.append(f"clip_factor >= {min(kept):.3g}")
    if "ttt/loss_gain" in logs:
        ttt.append(f"loss_gain {logs['ttt/loss_gain']:+.3g}")
    return "  ".join(parts) + (f"  | ttt: {', '.join(ttt)}" if ttt else "")


class SummaryProgress(ProgressCallback):
    """transformers' progress bar, writing `summary_line` for each log instead of the whole dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(summary_line(logs, state.global_step, state.max_steps))


class MetricsJsonl(TrainerCallback):
    """Append every log (loss, learning rate, TTT telemetry, ...) as one line of strict JSON: a NaN or
    an infinity (an evaluation loss, say) is written as null, never as 0.0 or a bare NaN."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps(finite_json({"step": state.global_step, **logs}), allow_nan=False) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines logged after `step` (a run resumed from checkpoint `step` logs them again),
    and a torn last line (what a kill in the middle of an append leaves), saying so."""
    from ..files import write_atomic

    path = Path(path)
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines and not lines[-1].rstrip().endswith("}"):
            warnings.warn(f"{path}: its last line is cut short (the run was killed while logging it): dropped", stacklevel=2)
            lines.pop()
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        write_atomic(path, "".join(line + "\n" for line in kept))
