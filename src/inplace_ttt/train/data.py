"""Training data: local documents, tokenized and packed into fixed-length rows.

A row holds several documents back to back with `position_ids` that restart at 0 for each,
the transformers convention for packed rows: neither attention nor fast weights cross a
document edge. A document longer than the space left in a row continues in the next row as a
new piece (its positions, and so its fast weights, restart there). The first token of each
piece gets label -100: nothing before it in the row belongs to its document.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def data_files(paths: Sequence[str]) -> list[Path]:
    """Expand files and folders into the data files they hold, checking each exists."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in TEXT_SUFFIXES or f.suffix in TABLE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"data: no such file or folder: {p}")
    bad = [str(f) for f in files if f.suffix not in TEXT_SUFFIXES and f.suffix not in TABLE_SUFFIXES]
    if bad:
        raise ValueError(f"data: unsupported file type {bad}; use .txt, .jsonl, .json or .parquet")
    if not files:
        raise ValueError(f"data: {list(paths)} holds no .txt/.jsonl/.parquet files")
    return files


def read_documents(paths: Sequence[str], text_field: str = "text", txt_split: str = "file") -> list[str]:
    """The documents of the given files: a .txt file is one document (or, with
    ``txt_split="blank_line"``, one per blank-line-separated block); .jsonl/.parquet rows are
    read with `datasets`, one document per row's `text_field`."""
    import datasets

    docs: list[str] = []
    for f in data_files(paths):
        if f.suffix in TEXT_SUFFIXES:
            text = f.read_text(encoding="utf-8")
            parts = [b for b in text.split("\n\n")] if txt_split == "blank_line" else [text]
            docs += [p.strip() for p in parts if p.strip()]
            continue
        table = datasets.load_dataset(TABLE_SUFFIXES[f.suffix], data_files=str(f), split="train")
        if text_field not in table.column_names:
            raise ValueError(f"data: {f} has no field {text_field!r} (fields: {table.column_names}); set data.text_field")
        docs += [t for t in table[text_field] if isinstance(t, str) and t.strip()]
    if not docs:
        raise ValueError(f"data: {list(paths)} holds no non-empty documents")
    return docs


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
