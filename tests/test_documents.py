import json

import pytest

from inplace_ttt.documents import read_documents


def test_reads_txt_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("one two\n\nthree four\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["five", "six seven"]) + "\n")
    import datasets

    datasets.Dataset.from_dict({"body": ["eight", ""]}).to_parquet(str(tmp_path / "c.parquet"))
    assert read_documents([str(tmp_path / "a.txt")]) == ["one two\n\nthree four"]
    assert read_documents([str(tmp_path / "a.txt")], txt_split="blank_line") == ["one two", "three four"]
    assert read_documents([str(tmp_path / "b.jsonl")]) == ["five", "six seven"]
    assert read_documents([str(tmp_path / "c.parquet")], text_field="body") == ["eight"]
    with pytest.raises(ValueError, match=r"has no field 'text' \(fields: \['body'\]\)"):
        read_documents([str(tmp_path / "c.parquet")])


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no such file or folder"),
        (lambda p: p.mkdir(), "holds no .txt/.jsonl/.parquet files"),
        (lambda p: (p.mkdir(), (p / "x.txt").write_text("  \n")), "holds no non-empty documents"),
        (lambda p: (p.mkdir(), (p / "x.csv").write_text("a")), "holds no .txt/.jsonl/.parquet files"),
    ],
)
def test_bad_data_is_named(tmp_path, setup, message):
    path = tmp_path / "data"
    setup(path)
    with pytest.raises(ValueError, match=message):
        read_documents([str(path)])


def test_suffix_less_text_files_come_in_through_a_glob_or_by_name(tmp_path):
    books = tmp_path / "books"
    (books / "more").mkdir(parents=True)
    (books / "pg11").write_text("alice was beginning")
    (books / "more" / "pg84").write_text("frankenstein")
    (books / "notes.csv").write_text("a,b")  # a folder's other files stay out, as before
    with pytest.raises(ValueError, match=r"holds no \.txt/\.jsonl/\.parquet files.*give a glob pattern such as 'folder/\*'"):
        read_documents([str(books)])
    assert read_documents([str(books / "pg11")]) == ["alice was beginning"]
    assert read_documents([str(books / "pg*")]) == ["alice was beginning"]
    assert read_documents([str(books / "**" / "pg*")]) == ["frankenstein", "alice was beginning"]  # sorted: more/pg84, pg11
    with pytest.raises(ValueError, match=r"unsupported file type \[.*notes\.csv'\]"):
        read_documents([str(books / "*")])
    with pytest.raises(ValueError, match="holds no"):
        read_documents([str(books / "nothing*")])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("latin1.txt", "café au lait".encode("latin-1"), r"data: .*latin1.txt is not UTF-8 text \(byte 0xe9 at offset 3\): convert it to UTF-8"),
        ("binary.txt", bytes(range(256)), r"data: .*binary.txt is not UTF-8 text \(byte 0x80 at offset 128\)"),
        ("nul.txt", b"text\x00more", r"data: .*nul.txt holds NUL bytes \(at offset 4\): a binary file, not text"),
        ("bad.jsonl", b'{"text": "a"}\n\n{"text": "b"\n{"text": "c"}\n', r"data: .*bad.jsonl, line 3: not valid JSON \(Expecting ',' delimiter"),
        ("list.jsonl", b'{"text": "a"}\n[1, 2]\n', r"data: .*list.jsonl, line 2: expected a JSON object, got list"),
        ("empty.jsonl", b"", r"data: .*empty.jsonl is empty"),
        ("cut.parquet", b"PAR1\x00\x00", r"data: cannot read .*cut.parquet as parquet \(.*\)"),
    ],
)
def test_unreadable_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_documents([str(tmp_path / name)])


def test_a_fifo_or_a_link_to_a_device_in_a_data_folder_is_named_before_anything_is_read(tmp_path, no_hang):
    import os

    (tmp_path / "a.txt").write_text("a document")
    os.mkfifo(tmp_path / "b.txt")  # opening it would block until a writer came
    with pytest.raises(ValueError, match=r"^data: .*b.txt is a FIFO \(named pipe\), not a regular file"):
        read_documents([str(tmp_path)])
    with pytest.raises(ValueError, match=r"^data: .*b.txt is a FIFO"):
        read_documents([str(tmp_path / "*")])
    (tmp_path / "b.txt").unlink()
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")  # would be read until memory runs out
    with pytest.raises(ValueError, match=r"^data: .*zero.jsonl is a character device, not a regular file"):
        read_documents([str(tmp_path / "zero.jsonl")])


def test_a_data_file_over_the_size_limit_is_refused_with_how_to_split_it(tmp_path, monkeypatch):
    from inplace_ttt import documents

    (tmp_path / "a.txt").write_text("x" * 100)
    monkeypatch.setattr(documents, "DOCUMENT_FILE_LIMIT", 99)
    with pytest.raises(ValueError, match=r"^data: .*a.txt holds 0.0 GiB, over the .* GiB a file may hold: split it into smaller files, e.g. split -C 1G"):
        read_documents([str(tmp_path)])
