"""Reading long inputs in pieces through the cache gives what one full forward gives."""

import pytest
import torch
import torch.nn.functional as F

from inplace_ttt.eval.stream import greedy, token_nll
from tests.tiny_hf import VOCAB, converted, tiny


def full_nll(model, ids):
    """The reference: one forward over the whole input, no cache."""
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False).logits[0]
    return F.cross_entropy(logits[:-1], ids[1:], reduction="none")


@pytest.mark.parametrize("make", [tiny, converted], ids=["plain", "ttt"])
@pytest.mark.parametrize("piece", [5, 16, 200])
def test_token_nll_in_pieces_equals_one_forward(make, piece):
    model = make()
    ids = torch.randint(3, VOCAB, (37,), generator=torch.Generator().manual_seed(0))
    got = token_nll(model, ids, piece)
    assert got.shape == (36,)
    torch.testing.assert_close(got, full_nll(model, ids), rtol=1e-5, atol=1e-5)


def test_token_nll_needs_two_tokens():
    assert token_nll(tiny(), torch.tensor([5]), 4).shape == (0,)


@pytest.mark.parametrize("make", [tiny, converted], ids=["plain", "ttt"])
def test_greedy_in_pieces_equals_generate(make):
    model = make()
    ids = torch.randint(3, VOCAB, (23,), generator=torch.Generator().manual_seed(1))
    got = greedy(model, ids, 12, piece=7)
    ref = model.generate(input_ids=ids[None], max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):]
    assert got == ref.tolist()


def test_greedy_stops_at_eos():
    model = tiny()
    ids = torch.randint(3, VOCAB, (9,), generator=torch.Generator().manual_seed(2))
    free = greedy(model, ids, 6, piece=4)
    stopped = greedy(model, ids, 6, piece=4, eos_token_id=free[2])
    assert stopped == free[: free.index(free[2])]
