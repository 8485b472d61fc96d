"""A conversation's losses streamed in pieces past the model's context equal one forward over it."""

import pytest
import torch

import inplace_ttt.eval.moshi.loss as moshi_loss
from inplace_ttt.eval.moshi.loss import conversation_nll, delayed_input, undelayed
from tests.eval.moshi.conftest import ttt_lm
from tests.tiny_moshi import TINY, random_codes


def forward_nll(lm, codes):
    """The reference: `LMModel.forward` over the whole conversation, -log p of each target (NaN where invalid)."""
    out = lm(codes[None])
    logp_text = torch.log_softmax(out.text_logits[0, 0].double(), -1)
    text = -logp_text.gather(-1, codes[0].clamp(min=0)[:, None])[:, 0]
    logp_audio = torch.log_softmax(out.logits[0].double(), -1)
    audio = -logp_audio.gather(-1, codes[1 : 1 + lm.dep_q].clamp(min=0)[..., None])[..., 0]
    return text.masked_fill(~out.text_mask[0, 0], float("nan")), audio.masked_fill(~out.mask[0], float("nan"))


def test_streamed_losses_equal_one_forward_over_a_conversation_longer_than_the_context(monkeypatch):
    lm = ttt_lm()
    T = 150  # the context is 64 steps
    codes = random_codes(lm, 1, T)[0]
    codes[4, 100:110] = -1  # missing values: no loss
    with torch.no_grad():
        text, audio = forward_nll(lm, codes)
    for piece in (40, 1, T):
        nll = conversation_nll(lm, codes, piece)
        assert torch.equal(nll["text"].isnan(), text.isnan()) and torch.equal(nll["audio"].isnan(), audio.isnan())
        torch.testing.assert_close(nll["text"], text, rtol=1e-5, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(nll["audio"], audio, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert nll["audio"].isnan().sum() == 7 + 10  # the 7 delayed codebooks' last step, and the missing values
    monkeypatch.setattr(moshi_loss, "widen_kv_caches", lambda *a: 0)  # moshi's own ring of `context` steps
    narrow = conversation_nll(lm, codes, 40)
    assert (narrow["text"] - text).abs().nan_to_num(0).max() > 1e-3


@pytest.mark.parametrize("T", [1, 3, 12])
def test_the_delays_are_moshis_own(T):
    """Our shifting equals moshi's private one, for delays of several steps, some longer than the conversation."""
    from moshi.models.lm import LMModel
    from moshi.models.lm_utils import _delay_sequence, _undelay_sequence

    torch.manual_seed(0)
    lm = LMModel(**{**TINY, "delays": [0, 0, 2, 5, 1, 4, 3, 2, 1] + [1] * 8}, dtype=torch.float32)
    codes = random_codes(lm, 1, T)
    initial = lm._get_initial_token()
    expected = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], 2)[0]
    assert torch.equal(delayed_input(lm, codes[0]), expected)
    steps = torch.randn(1 + lm.dep_q, T, dtype=torch.float64)
    expected, _ = _undelay_sequence(lm.delays[: 1 + lm.dep_q], steps[None].clone())
    torch.testing.assert_close(undelayed(steps, lm.delays[: 1 + lm.dep_q]), expected[0], rtol=0, atol=0, equal_nan=True)
