"""TTT telemetry for training: what each TTT layer is doing, logged with the loss.

Per TTT layer, averaged over the steps since the last log:
- ``grad_conv``, ``grad_target``, ``grad_down``: gradient norms of the convolution, `W_target`
  and the down projection, read before gradient clipping (the system this library replaces
  read them after clipping and always saw 1.0);
- ``fast_ratio``: ``lr ||sum dW|| / ||W0||`` at the end of a row, how far the fast weight moved;
- ``clipped_share``: the share of chunk updates that clipping scaled down (0 unless clipping
  was asked for in training).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..layer import InPlaceTTTMLP


class TTTTelemetry:
    """Collects per-layer numbers between logs; `flush` returns their means and starts over."""

    def __init__(self, layers: dict[int, InPlaceTTTMLP]):
        self.layers = layers
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def enable(self) -> None:
        for layer in self.layers.values():
            layer.record_stats = True

    def _add(self, key: str, value: float) -> None:
        self._sums[key] += value
        self._counts[key] += 1

    @torch.no_grad()
    def record_gradients(self) -> None:
        """Call after the backward of a step and before clipping."""
        for idx, layer in self.layers.items():
            for name, param in (("conv", layer.ttt.conv_weight), ("target", layer.ttt.target_weight), ("down", layer.down.weight)):
                if param is not None and param.grad is not None:
                    self._add(f"ttt/layer{idx}/grad_{name}", param.grad.float().norm().item())

    def record_forward(self) -> None:
        """Call after a training step: the layers' statistics of their last forward."""
        for idx, layer in self.layers.items():
            for key, value in layer.last_stats.items():
                self._add(f"ttt/layer{idx}/{key}", value)

    def flush(self) -> dict[str, float]:
        logs = {k: self._sums[k] / self._counts[k] for k in sorted(self._sums)}
        self._sums.clear()
        self._counts.clear()
        return logs


class MetricsJsonl(TrainerCallback):
    """Append every log (loss, learning rate, TTT telemetry, ...) as one JSON line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
