"""Fast-weight states inside a transformers Cache: beams followed, rollbacks refused, a cache filled without TTT refused."""

import pytest
import torch

import inplace_ttt
from tests.tiny_hf import VOCAB, converted, left_padded, logits, tiny, ttt_config


def test_beam_search_follows_the_beams():
    model = converted()
    ids, mask = left_padded([8, 6], 8)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=9,
        num_beams=3,
        length_penalty=0.0,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(2, seq.shape[1] - 8, dtype=torch.long)], 1)
    logp = torch.log_softmax(logits(model, seq, full_mask), -1)
    picked = logp[:, 7:-1].gather(-1, seq[:, 8:, None])[..., 0].sum(1)
    torch.testing.assert_close(picked, out.sequences_scores, rtol=1e-4, atol=1e-4)


def test_rollback_is_refused():
    model = converted()
    with torch.no_grad():
        out = model(input_ids=torch.randint(3, VOCAB, (1, 6)), use_cache=True)
    with pytest.raises(NotImplementedError, match="cannot be rolled back"):
        out.cache.crop(2)


def test_assisted_decoding_is_refused():
    model = converted()
    with pytest.raises(ValueError, match="requires a cache that can be cropped"):
        model.generate(input_ids=torch.randint(3, VOCAB, (1, 8)), assistant_model=tiny(), max_new_tokens=4, do_sample=False)


def test_a_cache_filled_without_ttt_is_refused():
    from transformers import DynamicCache

    base = tiny()
    with torch.no_grad():
        cache = base(input_ids=torch.randint(3, VOCAB, (1, 5)), cache=DynamicCache(config=base.config)).cache
    model = inplace_ttt.convert(base, ttt_config())
    with pytest.raises(ValueError, match="already holds 5 tokens that no fast-weight state saw"):
        model(input_ids=torch.randint(3, VOCAB, (1, 1)), cache=cache)


@pytest.mark.parametrize("make", [tiny, converted], ids=["plain", "ttt"])
def test_rows_read_alone_and_joined_continue_as_each_row_alone(make):
    """`join_rows`: one-row caches of different lengths (chunks left unfinished at different
    columns) joined left-padded; the next two tokens of every row, read as a masked batch, give
    each row's own logits of one unpadded forward."""
    from inplace_ttt.families.hf.cache import join_rows

    model = make()
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(3, VOCAB, (n,), generator=g) for n in (11, 6, 9)]  # 9, 4 and 7 read first: chunks of 4 cut at 1, 0 and 3
    caches = []
    with torch.no_grad():
        for r in rows:
            caches.append(model(input_ids=r[None, :-2], use_cache=True).cache)
        cache = join_rows(caches, [len(r) - 2 for r in rows])
        assert cache is not None and cache.get_seq_length() == 9
        mask = torch.zeros(3, 11, dtype=torch.long)
        for b, r in enumerate(rows):
            mask[b, 11 - len(r) :] = 1
        tail = torch.stack([r[-2:] for r in rows])
        positions = (mask.cumsum(-1) - 1)[:, -2:]
        got = model(input_ids=tail, cache=cache, attention_mask=mask, position_ids=positions, use_cache=True).logits
    for b, r in enumerate(rows):
        torch.testing.assert_close(got[b], logits(model, r[None])[0, -2:], rtol=1e-5, atol=1e-5)


def test_a_sliding_window_cache_is_not_joined():
    from inplace_ttt.families.hf.cache import join_rows

    model = converted("mistral_swa")
    with torch.no_grad():
        caches = [model(input_ids=torch.randint(3, VOCAB, (1, n)), use_cache=True).cache for n in (5, 7)]
    assert join_rows(caches, [5, 7]) is None
