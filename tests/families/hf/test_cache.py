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
