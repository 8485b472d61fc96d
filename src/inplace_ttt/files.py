"""Files: writing them so that a crash leaves the old version or the new one, never half of one;
reading a user's weights file only once it is known to be whole, and a JSON file of settings with
errors that name it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to (with any library); on a clean exit it is
    flushed to disk and renamed over `path`, on an exception it is deleted."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private (0600); give it an ordinary file's mode
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_safetensors(path: str | Path) -> None:
    """Refuse a safetensors file that is empty, cut short or not safetensors at all, naming it
    (the header's tensor sizes must cover the file exactly)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): it is empty, cut short or corrupt") from None


def read_json_object(path: str | Path) -> dict:
    """The JSON object a file holds; ValueError naming the file when it is missing, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data
