"""Streaming with `FastWeightState`: any schedule of prefills and single tokens gives the full
forward's outputs, for padded batches, across documents, with resets and reorders."""

import pytest
import torch

from inplace_ttt import FastWeightState, InPlaceTTTMLP, TTTConfig
from tests.conftest import GatedMLP, packed_positions, perturb_targets

D, H, C = 8, 16, 4


def make_layer(**config):
    layer = InPlaceTTTMLP(GatedMLP(D, H).double(), TTTConfig(layers=[0], chunk_size=C, ttt_lr=0.5, **config))
    perturb_targets(layer)
    return layer


def stream(layer, x, pos, cuts, state=None, **kw):
    """Feed `x` in pieces ending at `cuts`; single-column pieces take the one-token path."""
    state = state or FastWeightState()
    outs, start = [], 0
    for end in list(cuts) + [x.shape[1]]:
        if end > start:
            p = None if pos is None else pos[:, start:end]
            extra = {k: t[:, start:end] for k, t in kw.items()}
            outs.append(layer(x[:, start:end], position_ids=p, state=state, **extra))
        start = end
    return torch.cat(outs, 1), state


SCHEDULES = {
    "one prefill": [],
    "token by token": list(range(1, 23)),
    "prefill then tokens": list(range(6, 23)),
    "prefill, tokens, prefill, tokens": [3, 4, 5, 6, 13, 14, 15, 21, 22],
    "prefills across chunk edges": [2, 9, 11, 18],
}


@pytest.mark.parametrize("variant", [{}, {"target_conv": False}, {"target_projection": False}], ids=["conv+W", "no conv", "no W"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=list(SCHEDULES))
def test_streaming_equals_full_forward_with_left_padding(schedule, variant):
    layer = make_layer(**variant)
    x = torch.randn(3, 23, D, dtype=torch.float64)
    pos = packed_positions([[23], [18], [14]], 23, pad_left=[False, True, True])
    full = layer(x, position_ids=pos)
    out, _ = stream(layer, x, pos, SCHEDULES[schedule])
    valid = pos >= 0
    torch.testing.assert_close(out[valid], full[valid], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", ["token by token", "prefills across chunk edges"])
def test_positions_default_to_the_next_ones(schedule):
    layer = make_layer()
    x = torch.randn(2, 23, D, dtype=torch.float64)
    out, state = stream(layer, x, None, SCHEDULES[schedule])
    torch.testing.assert_close(out, layer(x), rtol=1e-10, atol=1e-10)
    assert state.last_pos.tolist() == [22, 22]


def test_new_documents_inside_the_stream():
    layer = make_layer()
    x = torch.randn(2, 20, D, dtype=torch.float64)
    pos = packed_positions([[6, 9, 5], [11, 9]], 20)
    full = layer(x, position_ids=pos)
    for cuts in (list(range(1, 20)), [4, 7, 8, 15]):
        out, _ = stream(layer, x, pos, cuts)
        torch.testing.assert_close(out, full, rtol=1e-10, atol=1e-10)


def test_updates_really_happen_while_streaming():
    layer = make_layer()
    x = torch.randn(1, 9, D, dtype=torch.float64)
    state = FastWeightState()
    sums = []
    for t in range(9):
        layer(x[:, t : t + 1], state=state)
        sums.append(state.fast_sum.abs().sum().item())
    # the fast weight changes exactly when a chunk completes (after tokens 3 and 7)
    changed = [t for t in range(1, 9) if sums[t] != sums[t - 1]]
    assert sums[0] == 0 and changed == [3, 7]


def test_token_embedding_target_streams():
    layer = make_layer(target_source="token_embeddings")
    x, emb = torch.randn(2, 15, D, dtype=torch.float64), torch.randn(2, 15, D, dtype=torch.float64)
    full = layer(x, target_source=emb)
    out, _ = stream(layer, x, None, [5, 6, 7, 12], target_source=emb)
    torch.testing.assert_close(out, full, rtol=1e-10, atol=1e-10)


def test_clipping_streams_like_the_full_forward():
    layer = make_layer(clip_tau=0.05)
    x = torch.randn(2, 17, D, dtype=torch.float64)
    out, _ = stream(layer, x, None, list(range(3, 17)))
    torch.testing.assert_close(out, layer(x), rtol=1e-10, atol=1e-10)


def test_reset_rows_restores_the_pretrained_weights():
    layer = make_layer()
    x = torch.randn(2, 14, D, dtype=torch.float64)
    y = torch.randn(1, 6, D, dtype=torch.float64)
    _, state = stream(layer, x[:, :10], None, [7])
    state.reset([1])
    assert state.fast_sum[1].abs().sum() == 0 and state.fast_sum[0].abs().sum() > 0
    # row 0 continues its sequence; row 1 starts over with y
    nxt = torch.cat([x[:1, 10:], y[:, :4]], 0)
    out = layer(nxt, state=state)
    torch.testing.assert_close(out[0], layer(x[:1])[0, 10:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1], layer(y[:, :4])[0], rtol=1e-10, atol=1e-10)


def test_reorder_follows_the_rows():
    layer = make_layer()
    x = torch.randn(3, 13, D, dtype=torch.float64)
    _, state = stream(layer, x[:, :9], None, [6])
    index = torch.tensor([2, 2, 0])
    state.reorder(index)
    out = torch.cat([layer(x[index, t : t + 1], state=state) for t in range(9, 13)], 1)
    torch.testing.assert_close(out, layer(x[index])[:, 9:], rtol=1e-10, atol=1e-10)


def test_state_lives_outside_the_module():
    layer = make_layer()
    params = {n: p.clone() for n, p in layer.named_parameters()}
    x = torch.randn(2, 12, D, dtype=torch.float64)
    a, _ = stream(layer, x, None, list(range(1, 12)))
    b, _ = stream(layer, x[:1], None, [5])  # another batch size, another state
    for n, p in layer.named_parameters():
        assert torch.equal(p, params[n]), n
    torch.testing.assert_close(b[0], a[0], rtol=1e-10, atol=1e-10)


def test_batch_mismatch_is_refused():
    layer = make_layer()
    _, state = stream(layer, torch.randn(2, 5, D, dtype=torch.float64), None, [])
    with pytest.raises(ValueError, match="the state holds 2 sequences but the input has 3 rows"):
        layer(torch.randn(3, 1, D, dtype=torch.float64), state=state)


def test_bf16_streaming_follows_the_updates():
    """The step path keeps a bf16 copy of the fp32 fast weight: it must refresh after every update."""
    layer = make_layer().to(torch.bfloat16)
    x = torch.randn(2, 17, D, dtype=torch.bfloat16)
    full = layer(x).float()
    out, state = stream(layer, x, None, list(range(1, 17)))
    assert state.fast_sum.dtype == torch.float32
    fast_part = (full - layer.down_proj(layer.spec.hidden(layer, x)).float()).abs().max()
    assert fast_part > 0.1  # the fast weights matter here
    assert (out.float() - full).abs().max() < 0.05 * full.abs().max()


def test_low_precision_copy_follows_every_state_change():
    """Reorders replace the fp32 state; the cached bf16 copy must never outlive it."""
    layer = make_layer().to(torch.bfloat16)
    x = torch.randn(2, 6, D, dtype=torch.bfloat16)
    for _ in range(10):
        state = FastWeightState()
        layer(x[:, :4], state=state)
        layer(x[:, 4:5], state=state)  # caches a bf16 copy
        state.reorder(torch.tensor([1, 1]))
        state.reorder(torch.tensor([0, 0]))  # a new tensor, possibly at the old address
        got = layer(x[:, 5:6], state=state)
        ref = FastWeightState()
        layer(x[:, :4], state=ref)
        layer(x[:, 4:5], state=ref)
        ref.reorder(torch.tensor([1, 1]))
        assert torch.equal(got, layer(x[:, 5:6], state=ref))


def test_reset_clears_a_state_that_blew_up():
    layer = make_layer()
    _, state = stream(layer, torch.randn(2, 5, D, dtype=torch.float64), None, [])
    state.fast_sum[0] = float("inf")
    state.reset([0])
    assert torch.equal(state.fast_sum[0], torch.zeros_like(state.fast_sum[0]))
    state.reset([])  # nothing to do, no error


def test_left_padded_continuation_after_buffered_tokens():
    layer = make_layer()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, -1, -1, -1], [0, 1, 2, -1, 3, 4, 5, 6, 7]])
    # row 1's second piece is left-padded while 3 tokens of its chunk wait in the state
    out, _ = stream(layer, x, pos, [3])
    ref0 = layer(x[:1, :6])
    ref1 = layer(torch.cat([x[1:, :3], x[1:, 4:]], 1))
    torch.testing.assert_close(out[0, :6], ref0[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1, [0, 1, 2, 4, 5, 6, 7, 8]], ref1[0], rtol=1e-10, atol=1e-10)


def test_empty_steps_change_nothing():
    layer = make_layer()
    x = torch.randn(2, 6, D, dtype=torch.float64)
    _, state = stream(layer, x, None, [])
    before = state.fast_sum.clone()
    assert layer(x[:, :0], state=state).shape == (2, 0, D)
    assert layer(x[:, :0]).shape == (2, 0, D)
    assert torch.equal(state.fast_sum, before) and state.last_pos.tolist() == [5, 5]


def test_decoding_follows_changes_of_the_down_projection():
    """A plain down projection decodes with the state's copy of W0 + lr S: a change of W0 in place
    (an optimizer step) must reach the next token, like a change of S does."""
    layer = make_layer()
    x = torch.randn(2, 11, D, dtype=torch.float64)
    _, state = stream(layer, x[:, :9], None, list(range(5, 9)))  # the last tokens took the one-token path
    with torch.no_grad():
        layer.down_proj.weight.mul_(1.5)
    out, _ = stream(layer, x[:, 9:], None, [1], state=state)
    torch.testing.assert_close(out, layer(x)[:, 9:], rtol=1e-10, atol=1e-10)


class Doubled(torch.nn.Linear):
    """A down projection that is not a plain Linear (as a LoRA-wrapped or quantized one is not)."""

    def forward(self, z):
        return 2 * super().forward(z)


@pytest.mark.parametrize("down", ["bias", "module of its own"])
def test_one_token_steps_use_the_down_projection_as_it_is(down):
    mlp = GatedMLP(D, H, bias=down == "bias").double()
    if down != "bias":
        doubled = Doubled(H, D, bias=False).double()
        doubled.weight = mlp.down_proj.weight
        mlp.down_proj = doubled
    layer = InPlaceTTTMLP(mlp, TTTConfig(layers=[0], chunk_size=C, ttt_lr=0.5))
    perturb_targets(layer)
    x = torch.randn(2, 14, D, dtype=torch.float64)
    out, _ = stream(layer, x, None, list(range(3, 14)))
    torch.testing.assert_close(out, layer(x), rtol=1e-10, atol=1e-10)
