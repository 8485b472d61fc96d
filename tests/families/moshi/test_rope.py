"""YaRN for Moshi's RoPE: transformers' formulas exactly, moshi's rotation layout, streaming."""

import pytest
import torch

from inplace_ttt.families.moshi.rope import YarnRotaryEmbedding, yarn_parameters

pytest.importorskip("moshi")
from moshi.models.lm import LMGen  # noqa: E402
from moshi.modules.rope import RotaryEmbedding  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

from inplace_ttt import TTTConfig, convert  # noqa: E402
from tests.tiny_moshi import (  # noqa: E402  (sets NO_TORCH_COMPILE before moshi loads)
    active_targets,
    codes_of_stream,
    logits,
    random_codes,
    stream,
    stream_inputs,
    tiny_lm,
)


def transformers_yarn(head_dim, theta, scaling):
    config = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        max_position_embeddings=scaling["original_max_position_embeddings"] * 8,
        rope_parameters={"rope_theta": theta, **scaling},
    )
    return ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")


@pytest.mark.parametrize("factor", [1.0, 2.0, 4.0, 8.0, 32.0])
@pytest.mark.parametrize(
    "extra", [{}, {"beta_fast": 16, "beta_slow": 2}, {"mscale": 0.707, "mscale_all_dim": 1.0}, {"attention_factor": 1.3}, {"truncate": False}]
)
@pytest.mark.parametrize("head_dim,theta,original", [(128, 10000.0, 3000), (64, 500000.0, 8192)])
def test_inverse_frequencies_and_attention_factor_match_transformers(factor, extra, head_dim, theta, original):
    scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original, **extra}
    ref_inv, ref_scale = transformers_yarn(head_dim, theta, scaling)
    inv, scale = yarn_parameters(head_dim, theta, **scaling)
    assert inv.dtype == torch.float32
    assert torch.equal(inv, ref_inv.float())
    assert scale == pytest.approx(ref_scale, rel=0, abs=1e-12)
    if not extra:  # the fastest dimension keeps its frequency, the slowest is divided by the factor
        plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        assert inv[0] == plain[0] and float(inv[-1]) == pytest.approx(float(plain[-1]) / factor, rel=1e-6)


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("time_before_heads", [True, False])
def test_unscaled_yarn_rotates_as_moshi_does(interleave, time_before_heads):
    D = 16
    q, k = torch.randn(2, 3, 5, D), torch.randn(2, 3, 5, D)
    offset = torch.tensor([0, 7])
    inv, scale = yarn_parameters(D, 10000.0, 1.0, 100)
    ours = YarnRotaryEmbedding(interleave, inv, scale, {"factor": 1.0})(q, k, offset, time_before_heads)
    theirs = RotaryEmbedding(interleave, 10000.0)(q, k, offset, time_before_heads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_yarn_is_set_at_conversion_and_streams_like_the_parallel_forward():
    lm = tiny_lm()
    codes = random_codes(lm, 2, 24)
    plain, _ = logits(lm, codes)
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4), rope_scaling=scaling)
    ropes = {id(layer.self_attn.rope) for layer in lm.transformer.layers} | {id(lm.transformer.rope)}
    assert len(ropes) == 1 and isinstance(lm.transformer.rope, YarnRotaryEmbedding)
    assert lm.transformer.rope.attention_factor == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)
    assert lm.inplace_ttt["rope_scaling"]["factor"] == 4.0
    scaled, _ = logits(lm, codes)
    assert not torch.allclose(scaled, plain)  # the scaling is in use
    active_targets(lm)
    user, forced = stream_inputs(lm, 2, 13)
    gen = LMGen(lm, use_sampling=False)
    with gen.streaming(2):
        streamed, texts = stream(gen, user, forced)
    parallel, _ = logits(lm, codes_of_stream(lm, texts, user, forced))
    torch.testing.assert_close(streamed, parallel[:, 0], rtol=1e-5, atol=1e-5)
