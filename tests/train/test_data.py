import torch

from inplace_ttt.train.data import collate, pack, tokenize
from tests.tiny_hf import tiny_tokenizer


def test_pack_restarts_positions_per_document_and_continues_long_ones():
    docs = [[1] * 5, [2] * 9, [3] * 3]
    rows = pack(docs, 6, pad_id=0)
    assert rows.input_ids.tolist() == [[1, 1, 1, 1, 1, 2], [2, 2, 2, 2, 2, 2], [2, 2, 3, 3, 3, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 2, -1]]  # padding: no document
    # the first token of every piece is not predicted from what precedes it; padding is not a target
    assert rows.labels.tolist() == [[-100, 1, 1, 1, 1, -100], [-100, 2, 2, 2, 2, 2], [-100, 2, -100, 3, 3, -100]]
    assert rows.document_lengths().tolist() == [5, 1, 6, 2, 3]


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


def test_tokenize_appends_eos():
    tok = tiny_tokenizer(["a", "b"])
    assert tokenize(["a b", "b"], tok) == [[4, 5, 2], [5, 2]]
