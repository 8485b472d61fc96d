"""A saved transformers In-Place TTT checkpoint with its tokenizer, documents tokenized into one
sequence, and the base model: what the doctor checks (`families.saved`)."""

from __future__ import annotations

from pathlib import Path

from ...documents import read_documents
from ..saved import Saved, SavedFiles
from .loading import is_ttt_checkpoint, load_causal_lm, quiet_transformers


def read_saved(files: SavedFiles) -> Saved:
    """The checkpoint in `files.model_dir`, the documents of `files.data` as one sequence of token
    ids (joined by blank lines, no special tokens), and `files.base` if given."""
    from transformers import AutoTokenizer

    if not Path(files.model_dir).is_dir():
        raise ValueError(f"{files.model_dir}: no such model folder")
    if not is_ttt_checkpoint(files.model_dir):
        raise ValueError(f"{files.model_dir} is not an In-Place TTT checkpoint (a converted model's save_pretrained folder, or a Moshi final/)")
    model = load_causal_lm(files.model_dir)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(files.model_dir)
    text = "\n\n".join(read_documents([files.data], files.text_field))
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    base = load_causal_lm(files.base, gguf_file=files.base_gguf_file) if files.base else None
    return Saved(model, ids, base, "tokens")
