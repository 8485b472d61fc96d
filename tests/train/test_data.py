import json

import pytest
import torch

from inplace_ttt.train.data import collate, pack, read_documents, tokenize
from tests.tiny_hf import tiny_tokenizer


def test_pack_restarts_positions_per_document_and_continues_long_ones():
    docs = [[1] * 5, [2] * 9, [3] * 3]
    rows = pack(docs, 6, pad_id=0)
    assert rows.input_ids.tolist() == [[1, 1, 1, 1, 1, 2], [2, 2, 2, 2, 2, 2], [2, 2, 3, 3, 3, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 2, 0]]
    # the first token of every piece is not predicted from what precedes it; padding is not a target
    assert rows.labels.tolist() == [[-100, 1, 1, 1, 1, -100], [-100, 2, 2, 2, 2, 2], [-100, 2, -100, 3, 3, -100]]
    assert rows.document_lengths() == [5, 1, 6, 2, 3, 1]


def test_pack_keeps_every_token_in_order():
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 50, (int(n),), generator=g).tolist() for n in torch.randint(1, 40, (20,), generator=g)]
    rows = pack(docs, 16, pad_id=0)
    flat = rows.input_ids.flatten().tolist()
    total = sum(len(d) for d in docs)
    assert flat[:total] == [t for d in docs for t in d]
    assert rows.labels.flatten()[total:].eq(-100).all()


def test_collate_stacks_rows_without_attention_mask():
    rows = pack([[1, 2, 3, 4]], 2, pad_id=0)
    batch = collate([rows[0], rows[1]])
    assert set(batch) == {"input_ids", "labels", "position_ids"} and batch["input_ids"].shape == (2, 2)


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


def test_tokenize_appends_eos():
    tok = tiny_tokenizer(["a", "b"])
    assert tokenize(["a b", "b"], tok) == [[4, 5, 2], [5, 2]]
