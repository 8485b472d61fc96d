"""Hugging Face transformers causal LMs (Llama, Qwen2, Qwen3, Mistral, ...): conversion (`convert`),
the per-forward context (`context`), fast weights inside a transformers `Cache` (`cache`), saving
and loading (`saving`, `loading`, GGUF included; transformers' Auto classes: `auto`), the authors' release format (`release`; a saved
folder rewritten in it: `export`), the doctor's view (`probe`) and what it reads from files (`saved`)."""

from ..protocol import Family
from .auto import InPlaceTTTConfig, InPlaceTTTForCausalLM, register
from .context import ttt_positions
from .convert import convert, decoder_layers, is_converted, set_context_parallel, settings, ttt_layers
from .export import export_folder
from .loading import checkpoint_settings, from_pretrained, is_ttt_checkpoint, load_causal_lm, looks_local, quiet_transformers
from .probe import PROBE
from .release import export_release
from .saved import read_saved

register()  # after `import inplace_ttt`, transformers' Auto classes read our folders

FAMILY = Family(
    name="transformers",
    convert=convert,
    ttt_layers=ttt_layers,
    settings=settings,
    set_context_parallel=set_context_parallel,
    probe=PROBE,
    read_saved=read_saved,
)

__all__ = [
    "FAMILY",
    "InPlaceTTTConfig",
    "InPlaceTTTForCausalLM",
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
    "export_folder",
]
