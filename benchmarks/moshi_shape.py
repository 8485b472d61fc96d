"""The `LMModel` settings of the Moshi benchmarks: Moshi 7B's layout (its delays, 8 + 8 audio
codebooks, the depformer) at a chosen width, depth and context, for random-weight models."""

from __future__ import annotations


def lm_kwargs(dim: int, layers: int, context: int, card: int = 2048, text_card: int = 32000) -> dict:
    return dict(
        delays=[0] + [0, 1, 1, 1, 1, 1, 1, 1] * 2,
        n_q=16,
        dep_q=8,
        card=card,
        text_card=text_card,
        dim=dim,
        num_heads=dim // 64,
        num_layers=layers,
        hidden_scale=4.125,
        causal=True,
        context=context,
        max_period=10000,
        gating="silu",
        norm="rms_norm_f32",
        positional_embedding="rope",
        depformer_dim=dim // 2,
        depformer_num_heads=max(1, dim // 128),
        depformer_num_layers=2,
        depformer_dim_feedforward=int(4.125 * dim // 2),
        depformer_multi_linear=True,
        depformer_weights_per_step=True,
        depformer_pos_emb="none",
        depformer_context=8,
    )
