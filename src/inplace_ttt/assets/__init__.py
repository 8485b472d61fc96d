"""Files shipped inside the package: a public-domain English corpus and a small Llama base
model pretrained on it, so that a first run needs no download and no GPU.

    from inplace_ttt.assets import base_model_dir, corpus_files
    model = AutoModelForCausalLM.from_pretrained(base_model_dir())
    docs = read_documents(corpus_files("heldout"))
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
SPLITS = ("train", "heldout")


def base_model_dir() -> Path:
    """The embedded base model and its tokenizer (a `from_pretrained` directory)."""
    return ROOT / "base"


def corpus_files(split: str) -> list[str]:
    """The parquet file(s) of a corpus split, "train" or "heldout" (one document per row, field `text`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return [str(ROOT / "corpus" / f"{split}.parquet")]
