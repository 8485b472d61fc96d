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


def test_only_regular_files_of_a_bounded_size_are_read(tmp_path, no_hang):
    import socket

    import pytest

    from inplace_ttt.files import check_regular_file

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        for name, kind in [
            ("pipe", "a FIFO \\(named pipe\\)"),
            ("zero", "a character device"),
            ("sock", "a socket"),
            ("loop", "a symbolic link loop"),
            ("", "a folder"),
        ]:
            with pytest.raises(ValueError, match=f"^data: {tmp_path / name} is {kind}, not a regular file"):
                check_regular_file(tmp_path / name, "data")
    with pytest.raises(ValueError, match=r"^data: no such file: .*gone \(a link to nothing\)$"):
        check_regular_file(tmp_path / "gone", "data")
    (tmp_path / "big.txt").write_bytes(b"x" * 3000)
    assert check_regular_file(tmp_path / "big.txt", "data", 3000) == 3000
    with pytest.raises(ValueError, match=r"^data: .*big.txt holds 0.0 GiB, over the 2.7.*e-06 GiB a file may hold: split it$"):
        check_regular_file(tmp_path / "big.txt", "data", 2999, ": split it")
