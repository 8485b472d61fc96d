"""Training data: documents tokenized and packed into fixed-length rows.

A row holds several documents back to back with `position_ids` that restart at 0 for each,
the transformers convention for packed rows: neither attention nor fast weights cross a
document edge. A document longer than the space left in a row continues in the next row as a
new piece (its positions, and so its fast weights, restart there). The first token of each
piece gets label -100: nothing before it in the row belongs to its document. Padding (the end
of the last row) has position -1, the library's mark for "no document": transformers sees each
padding token as a sequence of its own, the TTT layers leave it out of every update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..documents import read_documents

TOKENIZE_BATCH = 1000  # documents per tokenizer call (one progress step)


def tokenize(docs: Sequence[str], tokenizer, add_eos: bool = True) -> list[list[int]]:
    """Token ids per document as the tokenizer makes them for its model, its own special tokens
    included (a Llama's or Mistral's BOS opens each document, as in their pretraining; Qwen's
    tokenizer adds none), with the tokenizer's EOS appended when it has one and did not add it; a
    document of no text is dropped. A progress bar counts the characters read."""
    eos = tokenizer.eos_token_id if add_eos else None
    ids: list[list[int]] = []
    with tqdm(total=sum(map(len, docs)), desc="tokenizing", unit="char", unit_scale=True) as bar:
        for start in range(0, len(docs), TOKENIZE_BATCH):
            batch = list(docs[start : start + TOKENIZE_BATCH])
            ids += tokenizer(batch)["input_ids"]
            bar.update(sum(map(len, batch)))
    added = set(tokenizer("")["input_ids"])  # what the tokenizer adds to any text (a BOS): no text alone
    return [d + [eos] if eos is not None and d[-1] != eos else d for d in ids if any(t not in added for t in d)]


@dataclass
class PackedRows:
    """`[N, L]` input ids, labels and position ids (-1: padding, no document)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i], "position_ids": self.position_ids[i]}

    def document_lengths(self) -> torch.Tensor:
        """Lengths of the document pieces in the rows (what TTT sees as documents); padding is none."""
        pos = self.position_ids.flatten()
        starts = (pos == 0).nonzero()[:, 0]
        return torch.bincount(torch.bucketize(torch.arange(len(pos))[pos >= 0], starts, right=True) - 1, minlength=len(starts))


def pack(docs: Sequence[Sequence[int]], row_length: int, pad_id: int) -> PackedRows:
    """Pack token lists into rows of `row_length`, in linear time. A document longer than the room
    left in a row goes on in the next row as a new piece; a short last row is padded with position
    -1 (no document: no attention partner, no fast-weight update) and label -100."""
    if row_length < 2:
        raise ValueError(f"data.row_length must be >= 2; got {row_length}")
    lengths = torch.tensor([len(d) for d in docs], dtype=torch.long)
    total = int(lengths.sum())
    if total == 0:
        raise ValueError("data: no tokens to train on")
    flat = np.empty(total, dtype=np.int64)
    offset = 0
    with tqdm(total=len(docs), desc="packing", unit="doc") as bar:
        for doc in docs:
            flat[offset : offset + len(doc)] = doc
            offset += len(doc)
            bar.update()
    ids = torch.from_numpy(flat)
    token = torch.arange(total)
    doc_start = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    pos = torch.minimum(token - doc_start, token % row_length)  # restarts with the document and with the row
    short = -total % row_length
    input_ids = F.pad(ids, (0, short), value=pad_id).view(-1, row_length)
    position_ids = F.pad(pos, (0, short), value=-1).view(-1, row_length)
    labels = input_ids.masked_fill(position_ids <= 0, -100)  # a piece's first token has nothing of its own before it
    return PackedRows(input_ids, labels, position_ids)


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack packed rows; no attention mask: `position_ids` carry the document edges."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def build_dataset(data, tokenizer, paths: list[str]) -> PackedRows:
    """The documents of `paths` tokenized and packed as the `data` section (a `DataConfig`) says."""
    docs = tokenize(read_documents(paths, data.text_field, data.txt_split), tokenizer, data.add_eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    return pack(docs, data.row_length, pad)
