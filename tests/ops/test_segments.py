import pytest
import torch

from inplace_ttt.ops import find_segments


def test_documents_start_at_zero_or_at_a_jump():
    pos = torch.tensor([[-1, 0, 1, 2, 0, 1, 7, 8, -1]])
    seg = find_segments(pos, 1, 9, 2, pos.device)
    assert seg.doc_start[0].tolist() == [False, True, False, False, True, False, True, False, False]
    # chunks of 2 by position: [0,1] [2] | [0,1] | [7] [8]
    assert seg.seg_start[0].tolist() == [False, True, False, True, True, False, True, True, False]
    assert seg.seg_index[0].tolist() == [-1, 0, 0, 1, 2, 2, 3, 4, -1]


def test_a_row_may_continue_a_document():
    seg = find_segments(torch.tensor([[5, 6, 7]]), 1, 3, 4, torch.device("cpu"))
    assert not seg.doc_start.any()
    assert seg.seg_start[0].tolist() == [True, False, False]  # positions 5..7 are all chunk 1 (4..7)


def test_padding_keys_never_match():
    seg = find_segments(torch.tensor([[-1, -1, 0, 1]]), 1, 4, 8, torch.device("cpu"))
    key = seg.seg_key[0].tolist()
    assert key[0] != key[1] and key[2] == key[3] and key[1] != key[2]


def test_without_positions_each_row_is_one_document():
    seg = find_segments(None, 2, 5, 2, torch.device("cpu"))
    assert seg.valid.all() and not seg.doc_start.any()
    assert seg.seg_index[1].tolist() == [0, 0, 1, 1, 2]


def test_padding_inside_a_chunk_is_refused():
    with pytest.raises(ValueError, match=r"row 0, column 2"):
        find_segments(torch.tensor([[0, -1, 1]]), 1, 3, 4, torch.device("cpu"))


def test_an_empty_batch_has_no_segments():
    seg = find_segments(torch.zeros(2, 0, dtype=torch.long), 2, 0, 4, torch.device("cpu"))
    assert seg.seg_index.shape == (2, 0) and not seg.valid.any()


def test_each_rows_last_token_and_whether_it_leaves_its_chunk_unfinished():
    """Against a plain loop over the rows: right padding, left padding, a row of padding, a row whose
    last token ends its chunk (position 3 with chunks of 4), and the empty batch."""
    pos = torch.tensor([[0, 1, 2, -1, -1], [-1, -1, 0, 1, 2], [-1, -1, -1, -1, -1], [5, 6, 7, -1, -1], [0, 1, 2, 3, 0]])
    seg = find_segments(pos, 5, 5, 4, pos.device)
    col, last = seg.last_token()
    expect_col = [max((t for t in range(5) if pos[b, t] >= 0), default=-1) for b in range(5)]
    assert col.tolist() == expect_col
    assert last.tolist() == [int(pos[b, c]) if c >= 0 else -1 for b, c in enumerate(expect_col)]
    assert seg.ends_mid_chunk().tolist() == [True, True, False, False, True]
    empty = find_segments(torch.zeros(2, 0, dtype=torch.long), 2, 0, 4, torch.device("cpu"))
    assert [t.tolist() for t in empty.last_token()] == [[-1, -1], [-1, -1]] and not empty.ends_mid_chunk().any()
