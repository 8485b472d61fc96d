"""Hugging Face transformers causal LMs (Llama, Qwen2, Qwen3, Mistral, ...): conversion (`convert`),
the per-forward context (`context`), fast weights inside a transformers `Cache` (`cache`), saving
and loading (`saving`, `loading`, GGUF included), the authors' release format (`release`) and the
doctor's view (`probe`)."""

from ..protocol import Family
from .context import ttt_positions
from .convert import convert, decoder_layers, is_converted, set_context_parallel, settings, ttt_layers
from .loading import checkpoint_settings, from_pretrained, is_ttt_checkpoint, load_causal_lm, looks_local, quiet_transformers
from .probe import PROBE
from .release import export_release

FAMILY = Family(name="transformers", convert=convert, ttt_layers=ttt_layers, settings=settings, set_context_parallel=set_context_parallel, probe=PROBE)

__all__ = [
    "FAMILY",
    "convert",
    "decoder_layers",
    "is_converted",
    "set_context_parallel",
    "settings",
    "ttt_layers",
    "ttt_positions",
    "checkpoint_settings",
    "from_pretrained",
    "is_ttt_checkpoint",
    "load_causal_lm",
    "looks_local",
    "quiet_transformers",
    "export_release",
]
