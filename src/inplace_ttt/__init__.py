"""In-Place Test-Time Training for pretrained gated-MLP language models."""

from .config import TTTConfig
from .context import TTTContext

# the function, not its module: `inplace_ttt.doctor(model, batch)`; `from inplace_ttt.doctor import
# doctor, Report` keeps working (the submodule stays in sys.modules under its name)
from .doctor import doctor
from .families import clip_tau, convert, set_clip_tau, set_context_parallel, ttt_layers
from .families.hf import export_release, from_pretrained
from .layer import GatedMLPSpec, InPlaceTTTMLP, TargetGenerator
from .ops.state import FastWeightState

__all__ = [
    "TTTConfig",
    "TTTContext",
    "InPlaceTTTMLP",
    "GatedMLPSpec",
    "TargetGenerator",
    "FastWeightState",
    "convert",
    "from_pretrained",
    "export_release",
    "set_clip_tau",
    "clip_tau",
    "set_context_parallel",
    "ttt_layers",
    "doctor",
]
__version__ = "0.1.0"
