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
