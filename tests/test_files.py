import os
import stat

from inplace_ttt.files import write_atomic


def test_write_atomic_replaces_whole_and_leaves_an_ordinary_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    old_umask = os.umask(0o022)
    try:
        write_atomic(path, "new text")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new text"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary left behind


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    import pytest

    from inplace_ttt.files import atomic_path

    path = tmp_path / "codes.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half of the ne")
            raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["codes.safetensors"]
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["codes.safetensors"]
