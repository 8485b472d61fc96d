"""In-Place Test-Time Training for pretrained gated-MLP language models."""

from .cache import FastWeightState
from .config import TTTConfig
from .layer import GatedMLPSpec, InPlaceTTTMLP, TargetGenerator

__all__ = ["TTTConfig", "InPlaceTTTMLP", "GatedMLPSpec", "TargetGenerator", "FastWeightState"]
__version__ = "0.1.0"
