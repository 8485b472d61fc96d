"""Codes files named on the command line: files, folders of them, manifests through the caller's hook."""

import pytest

from inplace_ttt.families.moshi.codes import conversation_files


def test_files_folders_and_manifests_in_the_order_given(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/sub/b.safetensors", "d/a.safetensors", "d/notes.txt", "one.safetensors"):
        (tmp_path / name).touch()
    encoded = tmp_path / "m" / "x.safetensors"
    encoded.parent.mkdir()
    encoded.touch()
    got = conversation_files([tmp_path / "one.safetensors", str(tmp_path / "d"), tmp_path / "m.jsonl"], "--data", manifest=lambda p: [encoded])
    assert got == [tmp_path / "one.safetensors", tmp_path / "d" / "a.safetensors", tmp_path / "d" / "sub" / "b.safetensors", encoded]


def test_what_is_not_a_conversation_is_refused_naming_the_setting(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "m.jsonl").touch()
    with pytest.raises(ValueError, match=r"^data.train: .*m.jsonl is neither a codes file \(.safetensors\) nor a folder of them$"):
        conversation_files([tmp_path / "m.jsonl"])
    with pytest.raises(ValueError, match=r"^--data: .*lm.json is neither a codes file \(.safetensors\), a folder of them, nor a manifest \(.jsonl\)$"):
        conversation_files([tmp_path / "lm.json"], "--data", manifest=list)
    with pytest.raises(ValueError, match=r"^--data: \['.*empty'\] holds no conversations$"):
        conversation_files([tmp_path / "empty"], "--data", manifest=list)


def test_a_fifo_among_the_codes_files_is_named_before_it_is_opened(tmp_path, no_hang):
    import os

    os.mkfifo(tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"^--data: .*a.safetensors is a FIFO \(named pipe\), not a regular file"):
        conversation_files([tmp_path], "--data")
    with pytest.raises(ValueError, match=r"^--data: .*a.safetensors is a FIFO"):
        conversation_files([tmp_path / "a.safetensors"], "--data")
