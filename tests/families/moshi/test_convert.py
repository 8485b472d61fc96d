"""Kyutai Moshi: conversion, warm start, gradient flow, causality, LMGen streaming, resets, loaders.

A tiny random `LMModel` (3 temporal layers, dim 32, 8 + 8 audio codebooks) stands in for Moshi 7B.
"""

import os
from copy import deepcopy

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: no torch.compile on CPU

import pytest
import torch

pytest.importorskip("moshi")
from moshi.conditioners import ConditionAttributes  # noqa: E402
from moshi.models.lm import LMGen, LMModel  # noqa: E402
from moshi.models.loaders import get_moshi_lm  # noqa: E402

from inplace_ttt import TTTConfig, convert, ttt_layers  # noqa: E402
from inplace_ttt.families.moshi import update_counts  # noqa: E402
from tests.tiny_moshi import TINY, active_targets, codes_of_stream, logits, random_codes, stream, stream_inputs, tiny_lm  # noqa: E402


@pytest.mark.parametrize("target", ["token_embeddings", "hidden_states"])
def test_warm_start_is_exact_and_only_the_temporal_transformer_changes(target):
    lm = tiny_lm()
    codes = random_codes(lm, 2, 20)
    text_ref, audio_ref = logits(lm, codes)
    depformer_types = [type(layer.gating) for layer in lm.depformer.layers]
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4, target_source=target))
    text, audio = logits(lm, codes)
    assert torch.equal(text, text_ref) and torch.equal(audio, audio_ref)
    assert [i for i, _ in ttt_layers(lm)] == [0, 2]
    assert [type(layer.gating) for layer in lm.depformer.layers] == depformer_types
    layer = lm.transformer.layers[0].gating
    assert layer.activation is torch.nn.functional.silu  # moshi's own activation, not a rebuilt one
    names = {n for n, _ in lm.named_parameters()}
    assert {"transformer.layers.0.gating.linear_in.weight", "transformer.layers.0.gating.linear_out.weight"} <= names


def moshi_loss(lm: LMModel, codes: torch.Tensor) -> torch.Tensor:
    out = lm(codes)
    text = torch.nn.functional.cross_entropy(out.text_logits[out.text_mask], codes[:, :1][out.text_mask])
    audio = torch.nn.functional.cross_entropy(out.logits[out.mask], codes[:, 1 : lm.dep_q + 1][out.mask])
    return text + audio


def test_gradient_reaches_every_ttt_parameter_from_the_start():
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[0, 1], chunk_size=4, target_source="token_embeddings"))
    lm.train()
    codes = random_codes(lm, 2, 16)
    ttt_params = {n: p for n, p in lm.named_parameters() if ".ttt." in n}
    opt = torch.optim.SGD(lm.parameters(), lr=0.1)
    moshi_loss(lm, codes).backward()
    for n in ttt_params:
        if "conv_weight" in n:  # V = 0 at the start, W_target = I: the convolution gets gradient at once
            g = ttt_params[n].grad
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, n
    opt.step()
    opt.zero_grad()
    moshi_loss(lm, codes).backward()
    for n, p in ttt_params.items():  # after one step, every TTT parameter has gradient
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_activation_checkpointing_gives_the_same_gradients_after_a_later_forward():
    """A checkpointed layer re-runs in the backward: it must read the embeddings of its own
    forward, not those of a forward that came in between (gradient accumulation)."""
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    lm.train()
    codes, other = random_codes(lm, 2, 16), random_codes(lm, 2, 16)

    def ttt_grads(checkpointing: bool) -> dict:
        lm.zero_grad()
        lm.transformer.checkpointing = checkpointing
        loss = moshi_loss(lm, codes)
        moshi_loss(lm, other)  # a second forward before the first backward
        loss.backward()
        return {n: p.grad.clone() for n, p in lm.named_parameters() if ".ttt." in n}

    plain, checkpointed = ttt_grads(False), ttt_grads(True)
    assert all(plain[n].abs().sum() > 0 for n in plain)
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-5, atol=1e-6, msg=n)


def test_a_copy_of_a_converted_model_is_self_contained():
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    copy = deepcopy(lm)
    a, b = random_codes(lm, 2, 12), random_codes(lm, 2, 12)
    expected = logits(lm, b)[0]
    logits(lm, a)  # the original's last input must not leak into the copy
    assert torch.equal(logits(copy, b)[0], expected)


def test_outputs_never_depend_on_later_codes():
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    codes = random_codes(lm, 1, 16)
    text, _ = logits(lm, codes)
    t = 9
    changed = codes.clone()
    changed[:, :, t] = random_codes(lm, 1, 1)[:, :, 0]
    text2, _ = logits(lm, changed)
    # codes at time t enter the model at step t + 1 + delay: text logits up to step t stay
    assert torch.equal(text[:, :, : t + 1], text2[:, :, : t + 1])
    assert not torch.allclose(text[:, :, t + 1 :], text2[:, :, t + 1 :])


@pytest.mark.parametrize(
    "target,clip_tau,variant",
    [
        ("token_embeddings", None, {}),
        ("hidden_states", None, {}),
        ("token_embeddings", 0.5, {}),
        ("token_embeddings", None, {"target_conv": False}),
        ("hidden_states", None, {"target_projection": False}),
    ],
)
def test_lmgen_streaming_equals_the_parallel_forward(target, clip_tau, variant):
    lm = tiny_lm()
    base = tiny_lm()
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4, target_source=target, clip_tau=clip_tau, **variant))
    active_targets(lm)
    user, forced = stream_inputs(lm, 2, 14)  # 3 complete chunks of 4 steps, then 2 steps of a 4th
    gen = LMGen(lm, use_sampling=False)
    with gen.streaming(2):
        streamed, texts = stream(gen, user, forced)
        counts = update_counts(lm)
    assert {i: c.tolist() for i, c in counts.items()} == {0: [3, 3], 2: [3, 3]}  # updates really happened
    codes = codes_of_stream(lm, texts, user, forced)
    parallel, _ = logits(lm, codes)
    torch.testing.assert_close(streamed, parallel[:, 0], rtol=1e-5, atol=1e-5)
    untouched, _ = logits(base, codes)  # the updates change the outputs of the later chunks
    assert (parallel[:, 0, 4:] - untouched[:, 0, 4:]).abs().max() > 1e-2
    assert torch.equal(parallel[:, 0, :4], untouched[:, 0, :4])  # the first chunk sees the pretrained weights


def test_streaming_pieces_of_several_steps_equal_one_forward():
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    sequence = random_codes(lm, 2, 14)  # the temporal transformer's input codes, already delayed
    _, whole = lm.forward_text(sequence)
    with lm.streaming(2):
        pieces = [lm.forward_text(sequence[:, :, a:b])[1] for a, b in ((0, 5), (5, 6), (6, 14))]
    torch.testing.assert_close(torch.cat(pieces, 2), whole, rtol=1e-5, atol=1e-5)


def test_conditioned_lmgen_streaming_equals_the_parallel_forward():
    """A model conditioned by a summed description (moshi's ConditionFuser): the condition is
    part of the summed input embeddings, the target source, in both paths."""
    lut = {"n_bins": 3, "dim": 8, "tokenizer": "noop", "possible_values": ["calm", "happy", "sad"]}
    kwargs = {**TINY, "conditioners": {"description": {"type": "lut", "lut": lut}}, "fuser": {"sum": ["description"]}}
    torch.manual_seed(0)
    lm = get_moshi_lm(None, lm_kwargs=kwargs, dtype=torch.float32)
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    conditions = lm.condition_provider.prepare_and_provide([ConditionAttributes(text={"description": v}, tensor={}) for v in ("happy", "sad")])
    user, forced = stream_inputs(lm, 2, 13)
    gen = LMGen(lm, use_sampling=False, condition_tensors=conditions)
    with gen.streaming(2):
        streamed, texts = stream(gen, user, forced)
        assert all(c.tolist() == [3, 3] for c in update_counts(lm).values())
    codes = codes_of_stream(lm, texts, user, forced)
    parallel, _ = logits(lm, codes, conditions)
    torch.testing.assert_close(streamed, parallel[:, 0], rtol=1e-5, atol=1e-5)
    other = lm.condition_provider.prepare_and_provide([ConditionAttributes(text={"description": "calm"}, tensor={})] * 2)
    assert not torch.allclose(logits(lm, codes, other)[0], parallel)  # the condition is in use


def test_reset_streaming_restores_the_pretrained_weights_of_the_rows_reset():
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[1], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    user_a, forced_a = stream_inputs(lm, 2, 10)
    user_b, forced_b = stream_inputs(lm, 2, 10)
    gen = LMGen(lm, use_sampling=False)
    with gen.streaming(2):
        stream(gen, user_a, forced_a)
        state = lm.transformer.layers[1].gating._streaming_state.steps
        before = state.fast_sum.clone()
        assert (before.flatten(1).norm(dim=1) > 0).all()
        gen.reset_streaming(torch.tensor([False, True]))  # row 1 starts a new conversation
        assert torch.equal(state.fast_sum[0], before[0]) and not state.fast_sum[1].any()
        mixed, _ = stream(gen, torch.stack([user_a[0], user_b[1]]), torch.stack([forced_a[0], forced_b[1]]))
    fresh_gen = LMGen(lm, use_sampling=False)
    with fresh_gen.streaming(2):
        fresh, _ = stream(fresh_gen, user_b, forced_b)
    torch.testing.assert_close(mixed[1], fresh[1], rtol=1e-5, atol=1e-5)


def test_exec_mask_freezes_the_rows_it_masks():
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[0], chunk_size=2, target_source="hidden_states"))
    active_targets(lm)
    user, forced = stream_inputs(lm, 2, 6)
    gen = LMGen(lm, use_sampling=False, support_out_of_sync=True)
    with gen.streaming(2):
        gen.set_exec_mask(torch.tensor([True, False]))
        stream(gen, user, forced)
        steps = lm.transformer.layers[0].gating._streaming_state.steps
        assert steps.next_pos.tolist() == [6, 0] and steps.updates.tolist() == [3, 0]
        assert not steps.fast_sum[1].any() and steps.fast_sum[0].any()


@pytest.mark.parametrize("target", ["token_embeddings", "hidden_states"])
def test_rows_out_of_step_and_reset_mid_chunk_each_stream_like_their_own_forward(target):
    """Rows at different positions (an exec mask skips steps of row 1; row 0 starts over mid-chunk
    while row 1 goes on): each row's streamed outputs equal the parallel forward of the steps it ran."""
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[0, 2], chunk_size=4, target_source=target))
    active_targets(lm)
    T = 20
    sequence = random_codes(lm, 2, T)
    skipped = {2, 3, 7, 12, 13, 14}  # steps row 1 does not run
    reset_row0_at = 10  # mid-chunk (position 10 of chunk size 4), row 1 then mid-chunk too
    outs, ran = [[], []], [[], []]
    with torch.no_grad(), lm.streaming(2):
        for t in range(T):
            if t == reset_row0_at:
                lm.reset_streaming(torch.tensor([True, False]))
                outs[0], ran[0] = [], []
            lm.set_exec_mask(torch.tensor([True, t not in skipped]))
            _, step = lm.forward_text(sequence[:, :, t : t + 1])
            for b in range(2):
                if b == 0 or t not in skipped:
                    outs[b].append(step[b, :, 0])
                    ran[b].append(t)
        assert update_counts(lm)[0].tolist() == [4, 3]  # 10 + 10 steps (row 0), 14 steps (row 1)
    with torch.no_grad():
        for b in range(2):
            _, whole = lm.forward_text(sequence[b : b + 1, :, ran[b]])
            torch.testing.assert_close(torch.stack(outs[b], 1), whole[0], rtol=1e-5, atol=1e-5)


def test_a_reset_clears_an_overflowed_conversation():
    """A row whose last conversation overflowed (inf in its state) starts the next one clean."""
    lm = tiny_lm()
    convert(lm, TTTConfig(layers=[1], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    sequence = random_codes(lm, 2, 9)
    with torch.no_grad(), lm.streaming(2):
        lm.forward_text(sequence[:, :, :3])
        steps = lm.transformer.layers[1].gating._streaming_state.steps
        for t in (steps.window_src, steps.window_z, steps.pending, steps.fast_sum):
            t[1] = float("inf")  # as an overflow in fp16 would leave it
        lm.reset_streaming(torch.tensor([False, True]))
        _, streamed = lm.forward_text(sequence[:, :, 3:])
        assert torch.isfinite(steps.fast_sum[1]).all() and steps.updates[1] > 0
    with torch.no_grad():
        _, whole = lm.forward_text(sequence[1:, :, 3:])
    torch.testing.assert_close(streamed[1], whole[0], rtol=1e-5, atol=1e-5)
