"""What a checkpoint says about its own training: the ``training`` entry of its TTT settings.

`ittt train` appends one entry per run, ``{"mode": ..., "steps": ...}`` (in ``lora`` mode also
``"lora_target_modules"``), to the settings a converted model saves with it (``config.json``'s
``inplace_ttt`` for transformers, ``ttt.safetensors``' metadata for Moshi), and the loaders keep
it. The doctor reads it to tell a fresh conversion (which must compute what its base computes)
from a trained model, and to know which pretrained weights each run was allowed to change.
"""

from __future__ import annotations

from collections.abc import Iterable

TRAINING_KEY = "training"


def split_training(settings: dict) -> tuple[dict, list[dict]]:
    """The settings without their training record, and the record (empty for a fresh conversion)."""
    settings = dict(settings)
    return settings, list(settings.pop(TRAINING_KEY, None) or [])


def run_entry(mode: str, steps: int, lora_target_modules: Iterable[str] = ()) -> dict:
    """One run's entry in the record."""
    entry = {"mode": mode, "steps": int(steps)}
    if mode == "lora":
        entry["lora_target_modules"] = list(lora_target_modules)
    return entry


def trained_steps(record: list[dict]) -> int:
    return sum(int(entry.get("steps", 0)) for entry in record)


def may_change(record: list[dict], name: str, ttt_down: set[str]) -> bool:
    """Whether the runs of `record` were allowed to change the pretrained weight `name`
    (`ttt_down`: the names of the TTT layers' down projections, which ``ttt_only`` trains)."""
    for entry in record:
        if entry.get("steps", 0) <= 0:
            continue
        mode = entry.get("mode")
        if mode == "ttt_only":
            if name in ttt_down:
                return True
        elif mode == "lora":
            module = name.removesuffix(".weight")
            # PEFT's rule for a list of names: the module's name or its last dotted parts
            if name.endswith(".weight") and any(module == t or module.endswith("." + t) for t in entry.get("lora_target_modules", [])):
                return True
        else:  # full, or a mode this library does not know: any weight may have changed
            return True
    return False


def describe(record: list[dict]) -> str:
    """``ttt_only 16 steps, then lora 8 steps``."""
    return ", then ".join(f"{e.get('mode')} {e.get('steps')} steps" for e in record)
