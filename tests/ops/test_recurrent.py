"""The streaming ops, token by token, against the plain loop `inplace_ttt_reference` on the whole
sequence: any schedule of prefills and single tokens, padding, documents starting inside the stream,
clipping, the fused ``W0 + lr S`` product, and the CUDA-graph-safe fixed step."""

import pytest
import torch
import torch.nn.functional as F

from inplace_ttt.ops import chunk_conv, find_segments, inplace_ttt_reference, state_dtype
from inplace_ttt.ops.recurrent import fixed_step, prefill, token_step
from inplace_ttt.ops.state import FastWeightState, FixedStepState
from tests.conftest import packed_positions

D, H, C, K, LR = 6, 10, 4, 5, 0.7
DT = torch.float64


def target_fn(seed=0):
    """A chunk-local convolution then a projection, with random weights (the layer's target shape)."""
    g = torch.Generator().manual_seed(seed)
    taps = torch.randn(D, K, generator=g, dtype=DT) * 0.5
    w = torch.randn(D, D, generator=g, dtype=DT) * 0.5
    project = lambda y: F.linear(y, w)  # noqa: E731
    return (lambda src, key: project(chunk_conv(src, taps, key))), taps, project


def inputs(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, H, generator=g, dtype=DT), torch.randn(B, T, D, generator=g, dtype=DT)


def reference(z, src, pos, targets, clip_tau=None, w0=None):
    seg = find_segments(pos, z.shape[0], z.shape[1], C, z.device)
    v = targets(src, seg.seg_key)
    return inplace_ttt_reference(z, v, w0, LR, C, position_ids=pos, clip_tau=clip_tau)


def new_state(B):
    state = FastWeightState()
    state.init(B, D, H, D, C, DT, state_dtype(DT), torch.device("cpu"))
    return state


def stream(z, src, pos, cuts, targets, clip_tau=None, w0=None):
    """Feed the tokens in pieces ending at `cuts`: a one-token piece goes through `token_step`, a
    longer one through `prefill`."""
    state, outs, start = new_state(z.shape[0]), [], 0
    for end in [*cuts, z.shape[1]]:
        if end - start == 1:
            out = token_step(z[:, start], src[:, start], pos[:, start], state, targets, LR, C, clip_tau, w0)
            outs.append(out[:, None])
        elif end > start:
            fast = prefill(z[:, start:end], src[:, start:end], pos[:, start:end], state, targets, LR, C, clip_tau)
            outs.append(fast if w0 is None else fast + z[:, start:end] @ w0.T)
        start = end
    return torch.cat(outs, 1), state


T = 19
SCHEDULES = {
    "token by token": list(range(1, T)),
    "one prefill": [],
    "prefill then tokens": list(range(6, T)),
    "mixed, across chunk edges": [2, 3, 4, 9, 11, 12, 17, 18],
}


@pytest.mark.parametrize("clip_tau", [None, 0.3], ids=["no clip", "clip"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=list(SCHEDULES))
def test_streaming_ops_equal_the_reference(schedule, clip_tau):
    targets, _, _ = target_fn()
    z, src = inputs(3, T)
    # a row of two documents, a left-padded row, a right-padded row
    pos = torch.cat([packed_positions([[11, 8]], T), packed_positions([[14]], T, pad_left=[True]), packed_positions([[13]], T)])
    expect = reference(z, src, pos, targets, clip_tau)
    out, state = stream(z, src, pos, SCHEDULES[schedule], targets, clip_tau)
    valid = pos >= 0
    torch.testing.assert_close(out[valid], expect[valid], rtol=1e-12, atol=1e-12)
    assert state.last_pos.tolist() == [7, 13, 12]
    assert state.fast_sum.abs().sum() > 0  # the updates did happen (and were compared above)


def test_the_fused_down_projection_equals_the_reference_with_w0():
    targets, _, _ = target_fn()
    z, src = inputs(2, T)
    w0 = torch.randn(D, H, dtype=DT)
    pos = packed_positions([[19], [7, 12]], T)
    expect = reference(z, src, pos, targets, w0=w0)
    out, _ = stream(z, src, pos, SCHEDULES["prefill then tokens"], targets, w0=w0)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("clip_tau", [None, 0.3], ids=["no clip", "clip"])
def test_the_fixed_step_equals_the_reference(clip_tau):
    """Rows start at position 0 and read one token per step; a row that is not active keeps its state."""
    targets, taps, project = target_fn()
    z, src = inputs(2, T)
    expect = reference(z, src, None, targets, clip_tau)
    state = FixedStepState(2, D, H, D, K, DT, state_dtype(DT), torch.device("cpu"))
    outs = [fixed_step(z[:, t], src[:, t], state, torch.ones(2, dtype=torch.bool), taps, project, LR, C, clip_tau) for t in range(T)]
    torch.testing.assert_close(torch.stack(outs, 1), expect, rtol=1e-12, atol=1e-12)
    assert state.updates.tolist() == [T // C, T // C]
    # row 1 pauses at step 5 (not active: nothing read, its state kept): it reads its tokens one step later
    state = FixedStepState(2, D, H, D, K, DT, state_dtype(DT), torch.device("cpu"))
    row1 = []
    for t in range(T):
        j = t if t <= 5 else t - 1  # row 1's token at step t (at step 5 it is shown token 5 and ignores it)
        out = fixed_step(
            torch.stack([z[0, t], z[1, j]]),
            torch.stack([src[0, t], src[1, j]]),
            state,
            torch.tensor([True, t != 5]),
            taps,
            project,
            LR,
            C,
            clip_tau,
        )
        if t != 5:
            row1.append(out[1])
    torch.testing.assert_close(torch.stack(row1), expect[1, : T - 1], rtol=1e-12, atol=1e-12)
