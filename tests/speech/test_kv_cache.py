"""Blocks of many steps through moshi's streaming attention equal one forward over the whole
input once the ring caches are widened (and differ without it), on moshi's own Mimi."""

import pytest
import torch

from inplace_ttt.speech.kv_cache import widen_kv_caches
from tests.speech.conftest import random_mimi


def streamed_latent(mimi, audio, frames_per_block: int, widen: bool) -> torch.Tensor:
    block = frames_per_block * mimi.frame_size
    with torch.no_grad(), mimi.streaming(audio.shape[0]):
        if widen:
            assert widen_kv_caches(mimi, 2 * frames_per_block) == 2  # the encoder's and the decoder's transformers
        return torch.cat([mimi._encode_to_unquantized_latent(audio[..., a : a + block]) for a in range(0, audio.shape[-1], block)], -1)


def test_widened_caches_stream_blocks_exactly_like_one_forward():
    mimi = random_mimi()
    torch.manual_seed(1)
    audio = 0.1 * torch.randn(2, 1, 25 * mimi.frame_size * 25)  # 25 s: 625 encoder steps, its transformer's context is 250
    with torch.no_grad():
        whole = mimi._encode_to_unquantized_latent(audio)
    widened = streamed_latent(mimi, audio, 125, widen=True)
    torch.testing.assert_close(widened, whole, rtol=1e-5, atol=1e-5)
    narrow = streamed_latent(mimi, audio, 125, widen=False)  # moshi's ring of `context` steps loses keys
    error, narrow_error = (widened - whole).abs().max(), (narrow - whole).abs().max()
    print(f"max |streamed - whole|: widened {error:.2e}, not widened {narrow_error:.2e}")
    assert narrow_error > 1e-5 and narrow_error > 30 * error  # (small: random Mimi's layer scale is 0.01)


def test_widening_after_the_first_step_is_refused():
    mimi = random_mimi()
    with torch.no_grad(), mimi.streaming(1):
        mimi.encode(torch.zeros(1, 1, mimi.frame_size))
        with pytest.raises(RuntimeError, match="before the first streaming step"):
            widen_kv_caches(mimi, 4)
