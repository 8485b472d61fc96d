"""Files: writing them so that a crash leaves the old version or the new one, never half of one;
reading a user's file only once it is known to be a regular file of a bounded size (a FIFO would
hang the run, a link to /dev/zero fill its memory), a weights file only once it is known to be
whole, and a JSON file of settings with errors that name it."""

from __future__ import annotations

import errno
import json
import os
import stat
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


GiB = 1 << 30

_SPECIAL_KINDS = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a folder",
}


def check_regular_file(path: str | Path, what: str, limit: int | None = None, split_hint: str = "") -> int:
    """The size of `path` (links followed), refusing with a ValueError that names it and says what it
    is anything but a regular file of at most `limit` bytes, before it is opened: `what` names the
    setting it came from, `split_hint` how to make a file that is too large smaller."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{what}: no such file: {path}" + (" (a link to nothing)" if os.path.islink(path) else "")) from None
    except OSError as e:
        kind = "a symbolic link loop" if e.errno == errno.ELOOP else f"unreadable ({e.strerror or e})"
        raise ValueError(f"{what}: {path} is {kind}, not a regular file") from None
    for test, kind in _SPECIAL_KINDS.items():
        if test(info.st_mode):
            raise ValueError(f"{what}: {path} is {kind}, not a regular file: only regular files are read")
    if limit is not None and info.st_size > limit:
        raise ValueError(f"{what}: {path} holds {info.st_size / GiB:.1f} GiB, over the {limit / GiB:g} GiB a file may hold{split_hint}")
    return info.st_size


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
