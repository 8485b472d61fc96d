"""The codes file of a conversation: one safetensors file holding ``codes``, an integer tensor
``[K, T]`` at Moshi's 12.5 Hz frame rate, K = 1 + n_q streams in `LMModel` order (the text stream,
the model's own audio codebooks, then the user's; -1 marks a missing value: no input, no loss).
`ittt moshi-encode` writes them; training, evaluation and the doctor read them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ...files import GiB, check_regular_file

CODES_KEY = "codes"
CODES_FILE_LIMIT = GiB  # an hour of Moshi 7B codes is about 3 MB: a larger file is no conversation


def conversation_files(paths: list[str | Path], key: str = "data.train", manifest: Callable[[Path], list[Path]] | None = None) -> list[Path]:
    """The codes files `paths` name, in order: a codes file itself, a folder's (all below it, sorted)
    and, given `manifest` (what turns one into its codes files, e.g. by encoding it), those of each
    moshi-finetune manifest (``.jsonl``), each checked to be a regular file of at most
    `CODES_FILE_LIMIT` bytes before anything opens it. `key` names the setting in errors."""
    files: list[Path] = []
    for p in map(Path, paths):
        if manifest is not None and p.suffix == ".jsonl":
            files += manifest(p)
        elif p.is_dir():
            files += sorted(f for f in p.rglob("*.safetensors") if not f.is_dir())
        elif os.path.lexists(p) and not p.is_dir() and p.suffix == ".safetensors":
            files.append(p)
        else:
            kinds = "a codes file (.safetensors), a folder of them, nor a manifest (.jsonl)" if manifest else "a codes file (.safetensors) nor a folder of them"
            raise ValueError(f"{key}: {p} is neither {kinds}")
    if not files:
        raise ValueError(f"{key}: {[str(p) for p in paths]} holds no conversations")
    for f in files:
        check_regular_file(f, key, CODES_FILE_LIMIT, ": split the conversation into several files")
    return files


def read_conversation(path: Path, num_codebooks: int, text_card: int, card: int, predicted: int | None = None) -> torch.Tensor:
    """The ``codes`` ``[K, T]`` (long) of one conversation file, checked against the model;
    `predicted`: how many leading streams the training loss reads (text and the model's own
    audio), of which some value must be there."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if CODES_KEY not in f.keys():
                raise ValueError(f"{path}: no '{CODES_KEY}' tensor (expected int codes [K, T]); found {list(f.keys())}")
            codes = f.get_tensor(CODES_KEY)
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if codes.dim() != 2 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"{path}: '{CODES_KEY}' must be an integer tensor [K, T]; got {codes.dtype} {list(codes.shape)}")
    if codes.shape[0] != num_codebooks:
        raise ValueError(f"{path}: '{CODES_KEY}' has {codes.shape[0]} streams; the model reads {num_codebooks} (text + {num_codebooks - 1} audio codebooks)")
    if codes.shape[1] == 0:
        raise ValueError(f"{path}: '{CODES_KEY}' holds no steps ({list(codes.shape)})")
    codes = codes.long()
    if codes.min() < -1 or codes[0].max() >= text_card or codes[1:].max() >= card:
        raise ValueError(f"{path}: codes outside the model's vocabularies (text < {text_card}, audio < {card}, -1 for missing)")
    if (codes == -1).all():
        raise ValueError(f"{path}: every code is -1 (missing): nothing to train on")
    if predicted is not None and (codes[:predicted] == -1).all():
        raise ValueError(
            f"{path}: the {predicted} streams the loss predicts (text and the model's {predicted - 1} audio codebooks) are all -1 "
            "(missing): nothing to train on (the loss would be 0)"
        )
    return codes


def conversation_rows(conversations: list[torch.Tensor], row_length: int) -> torch.Tensor:
    """Cut each conversation into rows of `row_length` steps, right-padding the last with -1: ``[N, K, row_length]``."""
    rows = []
    for codes in conversations:
        for start in range(0, codes.shape[1], row_length):
            piece = codes[:, start : start + row_length]
            rows.append(F.pad(piece, (0, row_length - piece.shape[1]), value=-1))
    return torch.stack(rows)


class ConversationRows(torch.utils.data.Dataset):
    """Rows ``[N, K, L]`` of conversation codes, one ``{"codes": [K, L]}`` item each."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {CODES_KEY: self.rows[i]}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {CODES_KEY: torch.stack([item[CODES_KEY] for item in items])}
