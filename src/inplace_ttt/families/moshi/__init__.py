"""Kyutai Moshi's `LMModel` (an optional install: moshi): conversion and streaming (`convert`), YaRN
(`rope`), its files (`io`), the codes file of a conversation (`codes`), moshi-finetune's loss
(`loss`), the doctor's view (`probe`) and the family (`family.FAMILY`).

The names below load their module on first use, so that `io` and `codes` (file names, formats)
import without moshi installed; what runs a model needs moshi."""

from importlib import import_module

_HOME = {
    "FAMILY": "family",
    "MoshiTTTGating": "convert",
    "convert": "convert",
    "set_context_parallel": "convert",
    "settings": "convert",
    "ttt_layers": "convert",
    "update_counts": "convert",
    "LMLoadError": "io",
    "SAFETENSORS": "io",
    "TTT_WEIGHTS": "io",
    "load_base": "io",
    "load_moshi": "io",
    "moshi_lm": "io",
    "require_safetensors": "io",
    "save_ttt": "io",
    "save_ttt_weights": "io",
    "saved_settings": "io",
    "MoshiLoss": "loss",
    "training_loss": "loss",
    "unreached_parameters": "loss",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)


__all__ = sorted(_HOME)
