"""transformers integration on tiny random Llama, Qwen2, Qwen3 and Mistral models."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, PhiConfig

import inplace_ttt
from inplace_ttt import TTTConfig
from tests.tiny_hf import FAMILIES, VOCAB, converted, left_padded, logits, tiny, ttt_config


@pytest.mark.parametrize("family", FAMILIES)
def test_warm_start_is_exact(family):
    base = tiny(family)
    model = inplace_ttt.convert(copy.deepcopy(base), ttt_config())
    ids, mask = left_padded([19, 12], 19)
    diff = (logits(model, ids, mask) - logits(base, ids, mask))[mask.bool()]
    assert diff.abs().max() <= 1e-5


def test_converted_model_keeps_every_weight_under_its_name():
    base = tiny()
    before = dict(base.named_parameters())
    model = inplace_ttt.convert(base, ttt_config())
    after = dict(model.named_parameters())
    for name, p in before.items():
        assert after[name] is p
    new = sorted(set(after) - set(before))
    assert new == [f"model.layers.{i}.mlp.ttt.{w}" for i in (0, 2) for w in ("conv_weight", "target_weight")]
    assert model.config.inplace_ttt["layers"] == [0, 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_causal(family):
    model = converted(family)
    ids = torch.randint(3, VOCAB, (1, 14))
    ref = logits(model, ids)
    for t in (3, 8, 13):
        ids2 = ids.clone()
        ids2[0, t] = (ids2[0, t] + 1) % VOCAB
        assert torch.equal(logits(model, ids2)[0, :t], ref[0, :t])


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_documents_equal_documents_alone(family):
    model = converted(family)
    docs = [torch.randint(3, VOCAB, (1, n)) for n in (9, 5, 11)]
    ids = torch.cat(docs, 1)
    pos = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]  # as DataCollatorWithFlattening
    packed = logits(model, ids, position_ids=pos)
    alone = torch.cat([logits(model, d) for d in docs], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decoding_equals_full_forward(family):
    model = converted(family)
    ids, mask = left_padded([18, 11], 18)  # 18 tokens = 4+ chunks of 4
    full = logits(model, ids, mask)
    prompt = 6
    with torch.no_grad():
        out = model(input_ids=ids[:, :prompt], attention_mask=mask[:, :prompt], use_cache=True)
        steps = [out.logits]
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        for t in range(prompt, 18):
            out = model(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    inc = torch.cat(steps, 1)
    assert cache.ttt_states[0].fast_sum.abs().sum() > 0  # the fast weights did move
    valid = mask.bool()
    torch.testing.assert_close(inc[valid], full[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("sample", [False, True])
def test_generate_logits_equal_a_full_forward(family, sample):
    model = converted(family)
    ids, mask = left_padded([9, 5], 9)
    torch.manual_seed(3)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=10,
        do_sample=sample,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(2, seq.shape[1] - 9, dtype=torch.long)], 1)
    full = logits(model, seq, full_mask)
    gen = torch.stack(out.logits, 1)  # logits that chose tokens 9.. from positions 8..
    torch.testing.assert_close(gen, full[:, 8:-1], rtol=1e-4, atol=1e-4)


def test_fast_weights_carry_what_the_sliding_window_drops():
    """Past its window (5 tokens, 4 layers: a receptive field of 17), a sliding-window model cannot
    see the first token; its converted copy can, through the fast weights of earlier chunks."""
    base = tiny("mistral_swa")
    model = converted("mistral_swa")
    ids = torch.randint(3, VOCAB, (1, 40), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 1) % VOCAB
    assert torch.equal(logits(base, ids)[0, 20:], logits(base, changed)[0, 20:])
    assert (logits(model, ids)[0, 20:] - logits(model, changed)[0, 20:]).abs().amax(-1).min() > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_flow(checkpointing, family):
    model = inplace_ttt.convert(tiny(family), ttt_config())
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    ids = torch.randint(3, VOCAB, (2, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    grads = []
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if ".ttt." in n})
        opt.step()
    for name, g in grads[0].items():
        assert torch.isfinite(g).all()
        if name.endswith("conv_weight"):
            assert g.abs().sum() > 0, name  # at the first backward
    for name, g in grads[1].items():
        assert g.abs().sum() > 0, name  # all of them after one step


def test_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = converted()
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_token_embedding_target():
    base = tiny()
    model = converted(target_source="token_embeddings")
    ids, mask = left_padded([15, 10], 15)
    full = logits(model, ids, mask)
    with torch.no_grad():
        out = model(input_ids=ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
        steps = [out.logits]
        for t in range(7, 15):
            out = model(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1)[mask.bool()], full[mask.bool()], rtol=1e-4, atol=1e-4)
    fresh = inplace_ttt.convert(copy.deepcopy(base), ttt_config(target_source="token_embeddings"))
    assert (logits(fresh, ids, mask) - logits(base, ids, mask))[mask.bool()].abs().max() <= 1e-5


def test_yarn_long_context():
    """Conversion composes with transformers' own YaRN (we write no RoPE)."""
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    base = tiny(rope_parameters=rope, max_position_embeddings=64)
    model = inplace_ttt.convert(copy.deepcopy(base), ttt_config())
    ids = torch.randint(3, VOCAB, (1, 40))
    assert (logits(model, ids) - logits(base, ids)).abs().max() <= 1e-5
    assert model.model.rotary_emb.rope_type == "yarn"


def test_bad_conversions_are_refused_before_any_change():
    with pytest.raises(ValueError, match=r"indices \[7\] outside the model's 4 layers"):
        inplace_ttt.convert(tiny(), TTTConfig(layers=[0, 7]))
    model = inplace_ttt.convert(tiny(), ttt_config())
    with pytest.raises(ValueError, match="already an In-Place TTT model"):
        inplace_ttt.convert(model, ttt_config())
    phi = AutoModelForCausalLM.from_config(PhiConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
    with pytest.raises(ValueError, match=r"PhiForCausalLM: the MLP of layer 0 \(PhiMLP\) is not a gated MLP"):
        inplace_ttt.convert(phi, TTTConfig(layers="all"))
    assert not inplace_ttt.families.hf.is_converted(phi)


def test_top_level_convert_passes_the_context_parallel_group_and_refuses_other_options():
    model = inplace_ttt.convert(tiny(), ttt_config(), cp_group=None)
    assert [layer.cp_group for _, layer in inplace_ttt.ttt_layers(model)] == [None, None]
    with pytest.raises(TypeError, match="rope_scaling"):
        inplace_ttt.convert(tiny(), ttt_config(), rope_scaling={"rope_type": "yarn", "factor": 2.0})
    inplace_ttt.set_context_parallel(model, None)
    assert [layer.cp_group for _, layer in inplace_ttt.ttt_layers(model)] == [None, None]
    with pytest.raises(ValueError, match="convert it first"):
        inplace_ttt.set_context_parallel(tiny(), None)


def test_packed_quantized_weights_are_refused_before_any_change():
    model = tiny()
    mlp = model.model.layers[0].mlp
    mlp.gate_proj.weight = torch.nn.Parameter(mlp.gate_proj.weight.to(torch.int8), requires_grad=False)  # as a packed layer holds
    with pytest.raises(ValueError, match=r"holds quantized weights \(Linear\); In-Place TTT needs float weights"):
        inplace_ttt.convert(model, ttt_config())
    assert not inplace_ttt.families.hf.is_converted(model)


def test_batched_generation_needs_left_padding_from_a_tokenizer_that_pads_right():
    """Tokenizers often ship padding on the right; batched `generate` then continues the shorter row
    after its padding. With ``padding_side = "left"`` each row generates what it generates alone."""
    from tests.tiny_hf import tiny_tokenizer

    words = [f"w{i}" for i in range(VOCAB - 4)]
    tokenizer = tiny_tokenizer(words)
    assert tokenizer.padding_side == "right"
    model = converted()  # chunk 4: the prompts cross chunks, so fast weights act
    prompts = [" ".join(words[i % 40] for i in range(3, 9)), " ".join(words[i % 40] for i in range(5, 22))]
    alone = [model.generate(**tokenizer(p, return_tensors="pt"), max_new_tokens=6, do_sample=False)[0, -6:] for p in prompts]
    for side, expect_equal in (("left", True), ("right", False)):
        tokenizer.padding_side = side
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        new = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)[:, -6:]
        assert torch.equal(new[1], alone[1])  # the longest row has no padding either way
        assert torch.equal(new[0], alone[0]) == expect_equal, side
