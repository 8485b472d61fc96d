"""Loss by position and sliding-window loss, against plain loops over one full forward."""

import math

import pytest
import torch

from inplace_ttt.eval.loss import batched_nll, bucket_edges, loss_by_position, sliding_window
from tests.eval.conftest import full_nll
from tests.tiny_hf import VOCAB, converted


def docs(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("max_len", [100, 512, 4096, 65536])
def test_bucket_edges_double_from_a_power_of_two(max_len):
    edges = bucket_edges(max_len)
    assert edges[0] == 0 and edges[-1] == max_len
    assert all(b == 2 * a for a, b in zip(edges[1:-2], edges[2:-1]))
    assert math.log2(edges[1]).is_integer() and edges[1] >= 16
    assert len(edges) - 1 <= 9


def test_loss_by_position_matches_a_plain_loop():
    model = converted()
    documents = docs(70, 41, 90)
    edges = [0, 8, 16, 32, 64]
    got = loss_by_position(batched_nll(model, documents, piece=12, batch=2), edges)
    sums, counts = [0.0] * 4, [0] * 4
    for ids in documents:
        nll = full_nll(model, ids[:65])  # positions 1..64 predicted: the last bucket holds its upper edge
        for pos, value in enumerate(nll.tolist(), start=1):
            b = max(i for i in range(4) if edges[i] <= pos)
            sums[b] += value
            counts[b] += 1
    assert got["tokens"] == counts == [7 * 3, 8 * 3, 16 * 3, 33 * 2 + 9]
    assert got["documents"] == [3, 3, 3, 3]
    for a, s, c in zip(got["loss"], sums, counts):
        assert a == pytest.approx(s / c, rel=1e-5)


@pytest.mark.parametrize("reuse", [False, True], ids=["read", "reused"])
def test_sliding_window_scores_the_same_final_block(reuse):
    model = converted()
    documents = docs(60, 30, 51)
    known = batched_nll(model, documents, piece=16, batch=8) if reuse else None  # the 51-token document is the window at context 40
    got = sliding_window(model, documents, contexts=[0, 20, 40], block=10, piece=16, known=known)
    assert got["block"] == 10
    for c, row in got["contexts"].items():
        expected = []
        for ids in documents:
            if len(ids) >= c + 11:
                window = ids[len(ids) - c - 11 :]
                expected.append(full_nll(model, window)[-10:].mean().item())
        assert row["documents"] == len(expected)
        assert row["loss"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
        assert [x for x in row["per_document"] if x is not None] == pytest.approx(expected, rel=1e-5)
        assert row["ppl"] == pytest.approx(math.exp(row["loss"]))
    assert got["contexts"][40]["documents"] == 2  # the 30-token document is too short for 40 + 10
    assert got["contexts"][40]["per_document"][1] is None
