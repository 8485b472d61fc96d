"""Reading long inputs in pieces through the cache gives what one full forward gives."""

import pytest
import torch

from inplace_ttt.eval.stream import greedy, next_token_argmax, token_nll
from tests.eval.conftest import full_nll
from tests.tiny_hf import VOCAB, converted, tiny


@pytest.mark.parametrize("make", [tiny, converted], ids=["plain", "ttt"])
@pytest.mark.parametrize("piece", [5, 16, 200])
def test_token_nll_in_pieces_equals_one_forward(make, piece):
    model = make()
    ids = torch.randint(3, VOCAB, (37,), generator=torch.Generator().manual_seed(0))
    got = token_nll(model, ids, piece)
    assert got.shape == (36,)
    torch.testing.assert_close(got, full_nll(model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [tiny, converted], ids=["plain", "ttt"])
@pytest.mark.parametrize("piece, last", [(5, 3), (5, 12), (16, 20), (16, 36), (7, 50)])
def test_only_the_last_tokens_scored_equal_those_of_one_forward(make, piece, last):
    """Logits made only where read: the context before is still read, whatever the piece boundaries."""
    model = make()
    ids = torch.randint(3, VOCAB, (2, 37), generator=torch.Generator().manual_seed(3))
    got = token_nll(model, ids, piece, last=last)
    assert got.shape == (2, min(last, 36))
    for row, values in zip(ids, got):
        torch.testing.assert_close(values, full_nll(model, row)[-last:], rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            expected = model(input_ids=row[None]).logits[0].argmax(-1)[-last:]
        assert torch.equal(next_token_argmax(model, row[None], piece, last=last)[0], expected)


def test_token_nll_needs_two_tokens():
    assert token_nll(tiny(), torch.tensor([5]), 4).shape == (0,)


MODELS = {
    "plain": tiny,
    "ttt": converted,
    "swa": lambda: tiny("mistral_swa"),
    "swa_ttt": lambda: converted("mistral_swa"),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_token_nll_of_a_batch_equals_each_row(make):
    model = make()
    rows = torch.randint(3, VOCAB, (3, 30), generator=torch.Generator().manual_seed(4))
    got = token_nll(model, rows, 7)
    assert got.shape == (3, 29)
    for row, values in zip(rows, got):
        torch.testing.assert_close(values, full_nll(model, row), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_batched_greedy_in_pieces_equals_generate_one_at_a_time(make):
    model = make()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (23, 30, 12)]  # left-padded to 30 in the batch
    got = greedy(model, prompts, 12, piece=7)
    for p, new in zip(prompts, got):
        ref = model.generate(input_ids=p[None], max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p) :]
        assert new == ref.tolist()


def test_greedy_stops_each_row_at_eos():
    model = tiny()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (9, 6)]
    free = greedy(model, prompts, 6, piece=4)
    stopped = greedy(model, prompts, 6, piece=4, eos_token_id=free[0][2])
    assert stopped[0] == free[0][: free[0].index(free[0][2])]
    eos = free[0][2]
    assert stopped[1] == (free[1][: free[1].index(eos)] if eos in free[1] else free[1])


def test_greedy_stops_at_every_id_generate_stops_at():
    """Several stop ids, as a chat model's generation_config lists EOS and its end of turn: each row
    ends at the first of them, as `generate` ends there (which keeps the stop token; greedy drops it)."""
    model = converted()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (9, 13, 6)]
    free = greedy(model, prompts, 8, piece=4)
    stops = [free[0][3], free[1][1]]  # one id each row makes mid-answer
    model.generation_config.eos_token_id = stops
    got = greedy(model, prompts, 8, piece=4, eos_token_id=stops)
    for p, new in zip(prompts, got):
        ref = model.generate(input_ids=p[None], max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(p) :].tolist()
        assert new == (ref[:-1] if ref[-1] in stops else ref)
    assert len(got[0]) < 8 and len(got[1]) < 8  # both stops were met


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_each_row_gets_its_own_number_of_tokens(make):
    """Rows leave the batch when done (here after 0, 3, 9 and 5 tokens); the others go on as each alone."""
    model = make()
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (14, 9, 20, 11)]
    budgets = [0, 3, 9, 5]
    got = greedy(model, prompts, budgets, piece=6)
    assert [len(new) for new in got] == budgets
    for p, n, new in zip(prompts, budgets, got):
        if n:
            ref = model.generate(input_ids=p[None], max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p) :]
            assert new == ref.tolist()


def test_a_number_of_tokens_per_prompt_is_checked():
    with pytest.raises(ValueError, match="2 max_new_tokens for 3 prompts"):
        greedy(tiny(), [torch.tensor([4, 5])] * 3, [1, 2], piece=4)


@pytest.mark.parametrize("make, rows_alone", [(tiny, True), (converted, True), (MODELS["swa"], False), (MODELS["swa_ttt"], False)], ids=MODELS.keys())
def test_prompts_are_read_once(make, rows_alone):
    """Each prompt alone where the caches join, one padded batch where they cannot (sliding window): never both."""
    model = make()
    reads = []
    model.register_forward_pre_hook(lambda m, args, kwargs: reads.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (9, 13)]
    greedy(model, prompts, 1, piece=64)
    assert [r for r in reads if r[1] > 1] == ([(1, 8), (1, 12)] if rows_alone else [(2, 12)])
