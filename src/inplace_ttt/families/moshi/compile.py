"""moshi's lazy ``torch.compile`` (`moshi.utils.compile.torch_compile_lazy`, on its gating,
attention and depformer kernels) turned off where it only costs time: on a CPU, compiling them took
8.5 of a tiny training run's 34 CPU seconds (benchmarks/moshi_startup.py) and speeds nothing up.
moshi reads ``NO_TORCH_COMPILE`` when its modules are imported, so this runs before moshi is."""

from __future__ import annotations

import os

import torch


def compile_off_on_cpu(device: str) -> None:
    """Turn moshi's compile off for a run on `device` (``cpu``, ``cuda`` or ``auto``: cuda where
    there is one) when that is a CPU; a user's own ``NO_TORCH_COMPILE`` wins."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("NO_TORCH_COMPILE", "1")
