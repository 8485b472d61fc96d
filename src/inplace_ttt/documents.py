"""Documents from local files: .txt (one per file, or per blank-line block), .jsonl / .json /
.parquet (one per row's text field, read with `datasets`). Shared by training and evaluation.

A folder contributes the files with those suffixes. A file named on its own, or matched by a
glob pattern (``corpus/*``, ``books/**/*``), that has no suffix at all is read as plain text:
that is how a folder of suffix-less text files is included. Only regular files of at most
`DOCUMENT_FILE_LIMIT` bytes are read (`files.check_regular_file`, before any is opened)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from .files import GiB, check_regular_file

TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DOCUMENT_FILE_LIMIT = 4 * GiB  # every document is held in memory: a larger file is split first
SPLIT_HINT = ": split it into smaller files, e.g. split -C 1G --additional-suffix=.txt FILE part- (whole lines; .jsonl the same way)"


def data_files(paths: Sequence[str]) -> list[Path]:
    """Expand files, folders and glob patterns into the data files they hold, checking that each is
    a regular file (not a FIFO, device, socket or link loop) of at most `DOCUMENT_FILE_LIMIT` bytes."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if (f.suffix in TEXT_SUFFIXES or f.suffix in TABLE_SUFFIXES) and not f.is_dir())
        elif os.path.lexists(p):
            files.append(p)
        elif glob.has_magic(str(p)):
            files += sorted(Path(f) for f in glob.glob(str(p), recursive=True) if not Path(f).is_dir())
        else:
            raise ValueError(f"data: no such file or folder: {p}")
    for f in files:
        check_regular_file(f, "data", DOCUMENT_FILE_LIMIT, SPLIT_HINT)
    bad = [str(f) for f in files if f.suffix and f.suffix not in TEXT_SUFFIXES and f.suffix not in TABLE_SUFFIXES]
    if bad:
        raise ValueError(f"data: unsupported file type {bad}; use .txt, .jsonl, .json or .parquet (a file without a suffix is plain text)")
    if not files:
        raise ValueError(
            f"data: {list(paths)} holds no .txt/.jsonl/.parquet files. A folder contributes only files with those "
            "suffixes; for plain-text files without a suffix, give a glob pattern such as 'folder/*' (or the files themselves)"
        )
    return files


def read_documents(paths: Sequence[str], text_field: str = "text", txt_split: str = "file") -> list[str]:
    """The documents of the given files: a .txt file is one document (or, with
    ``txt_split="blank_line"``, one per blank-line-separated block); .jsonl/.parquet rows are
    read with `datasets`, one document per row's `text_field`."""
    docs: list[str] = []
    for f in data_files(paths):
        if f.suffix in TEXT_SUFFIXES or not f.suffix:
            text = read_text(f)
            parts = [b for b in text.split("\n\n")] if txt_split == "blank_line" else [text]
            docs += [p.strip() for p in parts if p.strip()]
            continue
        table = _read_table(f)
        if text_field not in table.column_names:
            raise ValueError(f"data: {f} has no field {text_field!r} (fields: {table.column_names}); set data.text_field")
        docs += [t for t in table[text_field] if isinstance(t, str) and t.strip()]
    if not docs:
        raise ValueError(f"data: {list(paths)} holds no non-empty documents")
    return docs


def read_text(path: Path) -> str:
    """A text file's contents, refusing one that is not UTF-8 text (a binary file, Latin-1)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"data: {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): convert it to UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if "\x00" in text:
        raise ValueError(f"data: {path} holds NUL bytes (at offset {text.index(chr(0))}): a binary file, not text")
    return text


def _read_table(path: Path):
    """A .jsonl / .json / .parquet file as a `datasets` table; a line that is not JSON is named."""
    import datasets
    import pyarrow

    if path.stat().st_size == 0:
        raise ValueError(f"data: {path} is empty")
    try:
        return datasets.load_dataset(TABLE_SUFFIXES[path.suffix], data_files=str(path), split="train")
    except (datasets.exceptions.DatasetsError, pyarrow.ArrowException) as e:  # what datasets and its Arrow readers raise for a bad file
        if path.suffix == ".jsonl":
            _raise_bad_line(path)
        cause = e.__cause__ or e
        raise ValueError(f"data: cannot read {path} as {TABLE_SUFFIXES[path.suffix]} ({str(cause).strip().splitlines()[0]})") from None


def _raise_bad_line(path: Path) -> None:
    """Find the first line of a JSON Lines file that is not a JSON object, and name it."""
    import json

    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"data: {path}, line {number}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"data: {path}, line {number}: expected a JSON object, got {type(row).__name__}")
