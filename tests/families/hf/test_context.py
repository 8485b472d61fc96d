"""The per-forward `TTTContext` of a converted transformers model: built once, handed to each TTT
layer through the forward's own arguments, alive for that call only."""

import pytest
import torch

import inplace_ttt
from inplace_ttt import context as context_module
from inplace_ttt.families.hf.context import CONTEXT_KEY
from tests.tiny_hf import VOCAB, converted


def packed(lengths, generator):
    """One row of documents of `lengths` and its positions (restarting at every document)."""
    ids = torch.randint(3, VOCAB, (1, sum(lengths)), generator=generator)
    return ids, torch.cat([torch.arange(n) for n in lengths])[None]


@pytest.mark.parametrize("target_source", ["hidden_states", "token_embeddings"])
def test_any_number_of_forwards_may_run_before_the_backwards_under_activation_checkpointing(target_source):
    """The recomputation of a checkpointed layer replays its own forward's context: two forwards of
    differently packed batches, then both backwards, give each batch's own gradients."""
    g = torch.Generator().manual_seed(3)
    batches = [packed([9, 7], g), packed([4, 12], g)]

    def grads(interleaved: bool):
        model = converted(target_source=target_source).train()
        model.gradient_checkpointing_enable()
        found = []
        if interleaved:
            losses = [model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss for ids, pos in batches]
        for i, (ids, pos) in enumerate(batches):
            loss = losses[i] if interleaved else model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss
            loss.backward()
            found.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            model.zero_grad()
        return found

    for alone, interleaved in zip(grads(False), grads(True)):
        assert alone.keys() == interleaved.keys()
        for name in alone:
            torch.testing.assert_close(interleaved[name], alone[name], rtol=1e-5, atol=1e-7)


def test_the_segments_are_found_once_per_forward(monkeypatch):
    model = converted(layers=[0, 1, 2, 3])  # four TTT layers share one search
    calls = []
    original = context_module.find_segments
    monkeypatch.setattr(context_module, "find_segments", lambda *a: calls.append(a) or original(*a))
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    assert len(calls) == 1


def test_the_context_serves_one_call_and_the_layer_refuses_to_run_without_one():
    model = converted()
    ids = torch.randint(3, VOCAB, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    layers = dict(inplace_ttt.ttt_layers(model))
    assert not any(isinstance(v, inplace_ttt.TTTContext) for layer in layers.values() for v in vars(layer).values())
    x = torch.randn(1, 10, model.config.hidden_size)
    with pytest.raises(RuntimeError, match="called outside its decoder layer's forward"):
        layers[0](x)
    out = layers[0](x, inplace_ttt.TTTContext(positions=torch.arange(10)[None]))  # by hand, with a context of its own
    torch.testing.assert_close(out, layers[0](x, position_ids=torch.arange(10)[None]))
    with pytest.raises(TypeError, match="not both"):
        layers[0](x, inplace_ttt.TTTContext(), position_ids=torch.arange(10)[None])


def test_attention_never_sees_the_context(monkeypatch):
    """Every layer's attention, with TTT or without, gets its usual arguments only."""
    model = converted()
    seen = []
    for layer in model.model.layers:
        layer.self_attn.register_forward_pre_hook(lambda m, a, kw: seen.append(CONTEXT_KEY in kw), with_kwargs=True)
    with torch.no_grad():
        model(input_ids=torch.randint(3, VOCAB, (1, 6)), use_cache=False)
    assert seen == [False] * len(model.model.layers)
