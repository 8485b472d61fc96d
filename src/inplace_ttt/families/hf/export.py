"""A saved model folder (ours or a release checkpoint) rewritten in the authors' release format,
with its tokenizer: what `ittt export` does."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .loading import from_pretrained, quiet_transformers
from .release import export_release


def export_folder(model_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Load `model_dir` in the dtype it was saved in and write it to `out` with `export_release`,
    its tokenizer beside it (a folder without one is written without it, with a warning)."""
    from transformers import AutoTokenizer

    model = from_pretrained(model_dir, dtype="auto")
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        tokenizer = None
        warnings.warn(f"{model_dir} has no tokenizer; their RULER pipeline needs one beside the weights", stacklevel=2)
    return export_release(model, out, tokenizer=tokenizer)
