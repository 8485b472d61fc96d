"""Training data: documents tokenized and packed into fixed-length rows.

A row holds several documents back to back with `position_ids` that restart at 0 for each,
the transformers convention for packed rows: neither attention nor fast weights cross a
document edge. A document longer than the space left in a row continues in the next row as a
new piece (its positions, and so its fast weights, restart there). The first token of each
piece gets label -100: nothing before it in the row belongs to its document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..documents import read_documents

def tokenize(docs: Iterable[str], tokenizer, add_eos: bool = True) -> list[list[int]]:
    """Token ids per document, with the tokenizer's EOS appended when it has one."""
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    ids = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    return [d + eos for d in ids if d]


@dataclass
class PackedRows:
    """`[N, L]` input ids, labels and position ids."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i], "position_ids": self.position_ids[i]}

    def document_lengths(self) -> list[int]:
        """Lengths of the document pieces in the rows (what TTT sees as documents)."""
        starts = self.position_ids == 0
        lengths = []
        for row in starts:
            idx = row.nonzero()[:, 0].tolist() + [row.shape[0]]
            lengths += [b - a for a, b in zip(idx[:-1], idx[1:])]
        return lengths


def pack(docs: Sequence[Sequence[int]], row_length: int, pad_id: int) -> PackedRows:
    """Pack token lists into rows of `row_length`; a short last row is padded (labels -100)."""
    if row_length < 2:
        raise ValueError(f"data.row_length must be >= 2; got {row_length}")
    ids: list[int] = []
    pos: list[int] = []
    for doc in docs:
        rest = list(doc)
        while rest:  # what does not fit continues in the next row, positions restarting
            room = row_length - len(ids) % row_length
            ids += rest[:room]
            pos += range(len(rest[:room]))
            rest = rest[room:]
    if not ids:
        raise ValueError("data: no tokens to train on")
    short = -len(ids) % row_length
    ids += [pad_id] * short
    pos += range(short)
    input_ids = torch.tensor(ids).view(-1, row_length)
    position_ids = torch.tensor(pos).view(-1, row_length)
    labels = input_ids.masked_fill(position_ids == 0, -100)
    if short:
        labels[-1, row_length - short :] = -100
    return PackedRows(input_ids, labels, position_ids)


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack packed rows; no attention mask: `position_ids` carry the document edges."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def build_dataset(data, tokenizer, paths: list[str]) -> PackedRows:
    """The documents of `paths` tokenized and packed as the `data` section (a `DataConfig`) says."""
    docs = tokenize(read_documents(paths, data.text_field, data.txt_split), tokenizer, data.add_eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    return pack(docs, data.row_length, pad)
