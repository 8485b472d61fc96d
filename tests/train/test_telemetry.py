"""When the loss with TTT off is measured: a function of the step alone (a resumed run logs what the
uninterrupted one logs: tests/train/test_run_dir.py compares whole metrics files)."""

import torch

from inplace_ttt.train.telemetry import GAIN_EVERY, TTTTelemetry


def measured(logging_steps: int, steps: int, layers: dict | None = None) -> list[int]:
    telemetry = TTTTelemetry({0: torch.nn.Identity()} if layers is None else layers)
    return [s for s in range(1, steps + 1) if telemetry.gain_due(s, s % logging_steps == 0 or s == steps, logging_steps)]


def test_the_first_log_step_and_then_the_first_log_step_past_each_multiple():
    assert GAIN_EVERY == 10
    assert measured(1, 25) == [1, 10, 20]
    assert measured(4, 25) == [4, 12, 20]  # 8 and 16 lie in the windows 12 and 20 measure
    assert measured(3, 25) == [3, 12, 21]
    assert measured(20, 45) == [20, 40]  # every regular log step once they are GAIN_EVERY or more apart; 45 shares 40's window


def test_nothing_is_measured_without_ttt_layers():
    assert measured(1, 25, layers={}) == []
