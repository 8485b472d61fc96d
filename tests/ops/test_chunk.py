"""The fast op against the plain loop (`inplace_ttt_reference`) and the invariants of docs/design.md."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inplace_ttt.ops import inplace_ttt, inplace_ttt_reference

F64 = torch.float64


def rand(*shape, dtype=F64, grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


@st.composite
def batches(draw):
    """Rows of packed documents: optional left padding, a first document that may continue
    (start at a non-zero position), more documents, optional right padding."""
    C = draw(st.integers(1, 5))
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 16))
    rows = []
    for _ in range(B):
        left = draw(st.integers(0, 3))
        right = draw(st.integers(0, 3))
        n = max(T - left - right, 0)
        row = [-1] * left
        start = draw(st.sampled_from([0, 0, draw(st.integers(1, 9))]))
        p = start
        while len(row) < left + n:
            if draw(st.integers(0, 5)) == 0:
                p = 0  # a new document
            row.append(p)
            p += 1
        row += [-1] * (T - len(row))
        rows.append(row[:T])
    return C, torch.tensor(rows)


@settings(max_examples=60, deadline=None)
@given(batches(), st.booleans(), st.booleans(), st.sampled_from([None, 0.3, 5.0]), st.integers(0, 2**16))
def test_matches_reference_on_packed_padded_rows(batch, with_w0, with_init, tau, seed):
    C, pos = batch
    B, T = pos.shape
    torch.manual_seed(seed)
    h, d = 5, 3
    z, v, w0 = rand(B, T, h), rand(B, T, d), rand(d, h) if with_w0 else None
    init = rand(B, d, h) if with_init else None
    kw = dict(position_ids=pos, clip_tau=tau, initial_state=init, output_final_state=True)
    out, final = inplace_ttt(z, v, w0, 0.8, C, **kw)
    ref, ref_final = inplace_ttt_reference(z, v, w0, 0.8, C, **kw)
    valid = pos >= 0
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, ref_final, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T, C", [(1, 4), (7, 3), (12, 4), (13, 1), (5, 8)])
def test_matches_reference_without_positions(T, C):
    z, v, w0, init = rand(2, T, 6), rand(2, T, 4), rand(4, 6), rand(2, 4, 6)
    for w in (w0, None):
        out, final = inplace_ttt(z, v, w, 1.3, C, initial_state=init, output_final_state=True)
        ref, ref_final = inplace_ttt_reference(z, v, w, 1.3, C, initial_state=init, output_final_state=True)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(final, ref_final, rtol=1e-10, atol=1e-10)


def test_definition_on_a_hand_worked_example():
    """Two chunks of two tokens, lr 2: the second chunk sees w0 + 2 * sum(v_t z_t^T) of the first."""
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]], dtype=F64)
    v = torch.tensor([[[1.0], [3.0], [5.0], [7.0]]], dtype=F64)
    w0 = torch.tensor([[1.0, -1.0]], dtype=F64)
    out = inplace_ttt(z, v, w0, 2.0, 2)
    # chunk 0 uses w0: [1, -1]; dW0 = 1*[1,0] + 3*[0,1] = [1, 3]; chunk 1 uses [1,-1] + 2*[1,3] = [3, 5]
    assert out[0, :, 0].tolist() == [1.0, -1.0, 8.0, 6.0]


@pytest.mark.parametrize("tau", [None, 0.5])
@pytest.mark.parametrize("merged", [True, False])
def test_backward_matches_reference_autograd(tau, merged):
    pos = torch.tensor([[-1, -1, 0, 1, 2, 3, 4, 0, 1, 2, 3], [5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6]])
    z, v, w0, init = rand(2, 11, 6, grad=True), rand(2, 11, 4, grad=True), rand(4, 6, grad=True), rand(2, 4, 6, grad=True)
    mask = (pos >= 0)[..., None]
    inputs = [z, v, w0, init] if merged else [z, v, init]
    grads = []
    for op in (inplace_ttt, inplace_ttt_reference):
        out, final = op(z, v, w0 if merged else None, 0.7, 3, position_ids=pos, clip_tau=tau, initial_state=init, output_final_state=True)
        loss = (out * mask).pow(2).sum() + (final * final.detach().cos()).sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("tau", [None, 0.4])
def test_gradcheck_float64(tau):
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2], [-1, 3, 4, 5, 6, 7, 8, 9, -1]])
    args = (rand(2, 9, 4, grad=True), rand(2, 9, 3, grad=True), rand(3, 4, grad=True), rand(2, 3, 4, grad=True))

    def f(z, v, w0, init):
        return inplace_ttt(z, v, w0, 0.6, 2, position_ids=pos, clip_tau=tau, initial_state=init, output_final_state=True)

    assert torch.autograd.gradcheck(f, args)

    def g(z, v, init):  # fast-weight term only, no positions
        return inplace_ttt(z, v, None, 0.6, 3, clip_tau=tau, initial_state=init, output_final_state=True)

    assert torch.autograd.gradcheck(g, (args[0], args[1], args[3]))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_lower_precision_close_to_float64(dtype, tol):
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3], [-1, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]])
    z, v, w0 = rand(2, 14, 16), rand(2, 14, 8) * 0.3, rand(8, 16) * 0.3
    ref, ref_final = inplace_ttt_reference(z, v, w0, 0.5, 3, position_ids=pos, output_final_state=True)
    out, final = inplace_ttt(z.to(dtype), v.to(dtype), w0.to(dtype), 0.5, 3, position_ids=pos, output_final_state=True)
    assert final.dtype == torch.float32  # the fast-weight sum is fp32 even for bf16 inputs
    valid = pos >= 0
    scale = ref[valid].abs().max()
    assert (out[valid].double() - ref[valid]).abs().max() / scale < tol
    assert (final.double() - ref_final).abs().max() / ref_final.abs().max() < tol


def test_bf16_keeps_small_updates():
    """A fast-weight change below bf16's resolution of w0 must still reach the output.

    w0 = 1 everywhere and z alternates in sign, so z w0^T = 0 exactly; the update moves each
    entry of W by 1e-3, which `bf16(1 + 1e-3) == 1` would erase if it were added to w0 first.
    """
    z = torch.tensor([1.0, -1.0] * 4).expand(1, 4, 8)
    v = torch.ones(1, 4, 1)
    w0 = torch.ones(1, 8)
    out = inplace_ttt(z.bfloat16(), v.bfloat16(), w0.bfloat16(), 5e-4, 2)
    assert out[0, :2].float().abs().max() == 0  # chunk 0: plain w0
    # chunk 1: lr * z (sum of the 2 updates v z^T)^T = 5e-4 * 2 * |z|^2 = 8e-3
    torch.testing.assert_close(out[0, 2:].float(), torch.full((2, 1), 8e-3), rtol=1e-2, atol=0)


def test_causal_at_chunk_granularity():
    T, C = 12, 4
    z, v, w0 = rand(1, T, 5), rand(1, T, 3), rand(3, 5)
    out = inplace_ttt(z, v, w0, 1.0, C)
    for t in range(T):
        z2, v2 = z.clone(), v.clone()
        z2[0, t] += 1.0
        v2[0, t] += 1.0
        out2 = inplace_ttt(z2, v2, w0, 1.0, C)
        changed = (out2 - out).abs().amax(-1)[0] > 0
        assert not changed[:t].any(), f"perturbing token {t} changed an earlier output"
        # a token's chunk update reaches exactly the later chunks
        first_later = (t // C + 1) * C
        if first_later < T:
            assert changed[first_later:].all()
        assert not changed[t + 1 : first_later].any()


def test_packing_equals_documents_alone():
    lengths = [7, 3, 9]
    C = 3
    docs = [(rand(1, n, 6), rand(1, n, 4)) for n in lengths]
    w0 = rand(4, 6)
    z = torch.cat([d[0] for d in docs], 1)
    v = torch.cat([d[1] for d in docs], 1)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    packed = inplace_ttt(z, v, w0, 0.9, C, position_ids=pos)
    alone = torch.cat([inplace_ttt(zd, vd, w0, 0.9, C) for zd, vd in docs], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-12, atol=1e-12)


def test_state_chaining_equals_one_pass():
    """Splitting a document at a chunk boundary and passing the state on gives the same result."""
    z, v, w0 = rand(2, 12, 5), rand(2, 12, 3), rand(3, 5)
    full = inplace_ttt(z, v, w0, 0.5, 4)
    a, state = inplace_ttt(z[:, :8], v[:, :8], w0, 0.5, 4, output_final_state=True)
    pos = torch.arange(8, 12).expand(2, 4)
    b = inplace_ttt(z[:, 8:], v[:, 8:], w0, 0.5, 4, position_ids=pos, initial_state=state)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-12, atol=1e-12)


def test_final_state_leaves_out_an_unfinished_chunk():
    z, v = rand(1, 6, 5), rand(1, 6, 3)
    _, state = inplace_ttt(z, v, None, 1.0, 4, output_final_state=True)
    torch.testing.assert_close(state[0], v[0, :4].T @ z[0, :4])


def test_clipping_bounds_each_chunk_update():
    z, v = rand(1, 9, 5) * 10, rand(1, 9, 3) * 10
    _, state = inplace_ttt(z, v, None, 1.0, 3, clip_tau=1e-3, output_final_state=True)
    # three complete chunks, each contributing a norm of exactly 1e-3
    assert state.norm() <= 3e-3 + 1e-12
    ref = sum((v[0, i : i + 3].T @ z[0, i : i + 3]) / (v[0, i : i + 3].T @ z[0, i : i + 3]).norm() * 1e-3 for i in (0, 3, 6))
    torch.testing.assert_close(state[0], ref)


def test_zero_targets_give_the_plain_projection_and_gradient():
    """V = 0 (the warm start) leaves w0 alone yet gives V a gradient once there are two chunks."""
    z, w0 = rand(1, 8, 5, grad=True), rand(3, 5)
    v = torch.zeros(1, 8, 3, dtype=F64, requires_grad=True)
    out = inplace_ttt(z, v, w0, 1.0, 4)
    torch.testing.assert_close(out, z @ w0.T, rtol=0, atol=1e-14)
    out.sum().backward()
    assert v.grad[0, :4].abs().sum() > 0  # chunk 0 feeds chunk 1
    assert v.grad[0, 4:].abs().sum() == 0  # the last chunk feeds nothing


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunk_size=0), "chunk_size must be an integer >= 1"),
        (dict(lr=float("nan")), "lr must be finite"),
        (dict(clip_tau=0.0), "clip_tau must be None or a finite number > 0"),
        (dict(w0=torch.zeros(2, 2, dtype=F64)), r"w0 must be \[d, h\] = \[3, 5\]"),
        (dict(initial_state=torch.zeros(1, 3, 5, dtype=F64)), r"initial_state must be \[B, d, h\] = \[2, 3, 5\]"),
        (dict(v=torch.zeros(2, 4, 3, dtype=F64)), "z must be"),
        (dict(v=torch.zeros(2, 6, 3)), "must share a dtype"),
        (dict(position_ids=torch.zeros(2, 5, dtype=torch.long)), r"position_ids must have shape \[B, T\] = \[2, 6\]"),
        (dict(position_ids=torch.zeros(2, 6)), "position_ids must be an integer tensor"),
        (dict(position_ids=torch.tensor([[0, 1, -1, 2, 3, 4]] * 2)), "padding inside a chunk of a document"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    args = dict(z=rand(2, 6, 5), v=rand(2, 6, 3), w0=rand(3, 5), lr=1.0, chunk_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        inplace_ttt(args.pop("z"), args.pop("v"), args.pop("w0"), args.pop("lr"), args.pop("chunk_size"), **args)


def test_stats_count_updates_and_clipping():
    z, v = rand(2, 12, 5), rand(2, 12, 3)
    stats = {}
    _, final = inplace_ttt(z, v, None, 1.0, 4, output_final_state=True, stats=stats)
    assert stats["updates"] == 6 and stats["clipped"] == 0  # 3 complete chunks per row
    assert stats["fast_norm"] == pytest.approx(final.flatten(1).norm(dim=1).mean().item())
    inplace_ttt(z, v, None, 1.0, 4, clip_tau=1e-6, stats=stats)
    assert stats["updates"] == 4 and stats["clipped"] == 4  # without a final state the last chunk is skipped


def reference_updates(z, v, pos, C, tau):
    """Norms and clip factors of the folded chunk updates, slot by slot (slot-major, then rows),
    by a plain float64 loop over each row's documents and chunks."""
    per_row = []
    for b in range(z.shape[0]):
        chunks, key = [], None
        for t in range(z.shape[1]):
            p = int(pos[b, t])
            if p < 0:
                continue
            if p == 0 or key is None or p != key[1] + 1:
                doc = len(chunks)
                key = (doc, p)
            if not chunks or (chunks[-1][0], chunks[-1][1]) != (key[0], p // C):
                chunks.append([key[0], p // C, torch.zeros(v.shape[-1], z.shape[-1], dtype=F64)])
            chunks[-1][2] += torch.outer(v[b, t].double(), z[b, t].double())
            key = (key[0], p)
        # slot s of a row is its s-th chunk; a chunk folds in when a later chunk of its document follows
        per_row.append([c[2] if nxt[0] == c[0] else None for c, nxt in zip(chunks, chunks[1:] + [[None]])])
    norms, factors = [], []
    for s in range(max(len(r) for r in per_row)):
        for row in per_row:
            if s < len(row) and row[s] is not None:
                n = row[s].norm()
                norms.append(n)
                factors.append(torch.clamp(tau / n, max=1.0) if tau is not None else torch.tensor(1.0, dtype=F64))
    return torch.stack(norms), torch.stack(factors)


@pytest.mark.parametrize("tau", [None, 0.5, 1e-6])
def test_stats_hold_each_update_norm_and_clip_factor(tau):
    """What telemetry and `clip_report` read: every folded update's norm before clipping and the
    share clipping kept, as a float64 plain loop computes them (packed documents, padding)."""
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4], [-1, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]])
    z, v = rand(2, 14, 5), rand(2, 14, 3)
    stats = {}
    inplace_ttt(z, v, None, 1.0, 3, position_ids=pos, clip_tau=tau, stats=stats)
    norms, factors = reference_updates(z, v, pos, 3, tau)
    assert stats["updates"] == len(norms) == 2 + 1 + 3  # row 0: documents of 3 and 2 chunks; row 1: 4 chunks; a last chunk is not folded
    torch.testing.assert_close(stats["update_norms"], norms, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats["clip_factors"], factors, rtol=1e-12, atol=1e-12)
    assert stats["clipped"] == int((factors < 1).sum())
    if tau == 1e-6:
        assert float(stats["clip_factors"].max()) < 1e-5


def test_recording_norms_leaves_outputs_and_gradients_as_they_are():
    """Stats form each update on its own (to take its norm); the backward rebuilds the same states."""
    z, v, w0 = rand(2, 12, 5, grad=True), rand(2, 12, 3, grad=True), rand(3, 5)
    plain = inplace_ttt(z, v, w0, 0.7, 4)
    recorded = inplace_ttt(z, v, w0, 0.7, 4, stats={})
    torch.testing.assert_close(recorded, plain, rtol=1e-14, atol=1e-14)
    g = torch.randn_like(plain)
    a = torch.autograd.grad(plain, (z, v), g)
    b = torch.autograd.grad(recorded, (z, v), g)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_a_document_that_blows_up_does_not_poison_the_next():
    z, v = rand(1, 12, 4), rand(1, 12, 3)
    v[0, 1] = float("inf")
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]])
    out = inplace_ttt(z, v, None, 1.0, 2, position_ids=pos)
    ref = inplace_ttt_reference(z, v, None, 1.0, 2, position_ids=pos)
    assert out[0, 6:].isfinite().all()
    torch.testing.assert_close(out[0, 6:], ref[0, 6:])


def test_fp16_chunk_updates_do_not_overflow():
    """A long chunk's update sums past fp16's range; it is formed in fp32 like the reference's."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(1, 512, 8, generator=g).abs() * 100).double()
    v = torch.full((1, 512, 4), 10.0, dtype=F64)
    for tau in (None, 1.0):
        out = inplace_ttt(z.half(), v.half(), None, 1e-5, 256, clip_tau=tau)
        ref = inplace_ttt_reference(z, v, None, 1e-5, 256, clip_tau=tau)
        assert out.isfinite().all()
        torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=1e-3 * ref.abs().max().item())


def test_empty_inputs():
    for B, T in ((2, 0), (0, 5)):
        z, v, init = rand(B, T, 4, grad=True), rand(B, T, 3), rand(B, 3, 4)
        out, final = inplace_ttt(z, v, None, 1.0, 2, initial_state=init, output_final_state=True)
        assert out.shape == (B, T, 3) and torch.equal(final, init)
        pos = torch.zeros(B, T, dtype=torch.long)
        assert inplace_ttt(z, v, rand(3, 4), 1.0, 2, position_ids=pos).shape == (B, T, 3)
