"""Moshi streaming on a GPU, where LMGen captures its step in a CUDA graph: the TTT layers run
inside the graph and their state (preallocated, updated in place) keeps updating on every replay.
Skipped without CUDA."""

import pytest
import torch

pytest.importorskip("moshi")
from moshi.models.lm import LMGen  # noqa: E402

from inplace_ttt import TTTConfig, convert  # noqa: E402
from inplace_ttt.families.moshi import update_counts  # noqa: E402
from tests.tiny_moshi import active_targets, codes_of_stream, logits, stream, stream_inputs, tiny_lm  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_graph_streaming_updates_and_equals_the_parallel_forward():
    lm = convert(tiny_lm().cuda(), TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    user, forced = stream_inputs(lm, 2, 14)
    gen = LMGen(lm, use_sampling=False)
    with gen.streaming(2):
        streamed, texts = stream(gen, user.cuda(), forced.cuda())
        assert gen._streaming_state.graphed_main._graph is not None  # the step ran from a captured graph
        counts = {i: c.tolist() for i, c in update_counts(lm).items()}
        state = lm.transformer.layers[2].gating._streaming_state.steps
        before = state.fast_sum.clone()
        gen.reset_streaming(torch.tensor([False, True], device="cuda"))
        assert torch.equal(state.fast_sum[0], before[0]) and not state.fast_sum[1].any()
        again, _ = stream(gen, user.cuda(), forced.cuda())  # row 1 replays the conversation from the start
    assert counts == {0: [3, 3], 2: [3, 3]}
    parallel, _ = logits(lm, codes_of_stream(lm, texts.cpu(), user, forced).cuda())
    print(f"max |streamed - parallel| = {(streamed - parallel[:, 0]).abs().max().item():.3g}")
    torch.testing.assert_close(streamed, parallel[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again[1], streamed[1], rtol=1e-4, atol=1e-4)
