"""`InPlaceTTTMLP`: adoption of the wrapped weights, warm start, gradient flow, and its output
against an independent composition (plain MLP + per-segment conv1d + the reference loop)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inplace_ttt import GatedMLPSpec, InPlaceTTTMLP, TTTConfig
from inplace_ttt.ops import inplace_ttt_reference
from tests.conftest import GatedMLP, packed_positions, per_segment_conv, perturb_targets

D, H = 8, 16


def make(config=None, dtype=torch.float64, **mlp_kw):
    mlp = GatedMLP(D, H, **mlp_kw).to(dtype)
    layer = InPlaceTTTMLP(mlp, config or TTTConfig(layers=[0], chunk_size=4, ttt_lr=0.5))
    return mlp, layer


train_targets = perturb_targets


def test_adopts_the_wrapped_parameters_under_their_names():
    mlp, layer = make()
    before = dict(mlp.named_parameters())
    after = dict(layer.named_parameters())
    for name, p in before.items():
        assert after[name] is p  # same Parameter object, same name
    assert set(after) - set(before) == {"ttt.conv_weight", "ttt.target_weight"}
    assert not isinstance(layer.ttt, nn.Linear) and not any(isinstance(m, nn.Linear) for m in layer.ttt.modules())


@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU(approximate="tanh"), nn.ReLU()])
@pytest.mark.parametrize("bias", [False, True])
def test_warm_start_is_exact(act, bias):
    mlp, layer = make(act=act, bias=bias, dtype=torch.float32)
    x = torch.randn(3, 21, D)
    pos = packed_positions([[21], [10, 11], [15]], 21, pad_left=[False, False, True])
    for kw in ({}, {"position_ids": pos}):
        diff = (layer(x, **kw) - mlp(x)).abs()
        if kw:
            diff = diff[pos >= 0]
        assert diff.max() <= 1e-5


def test_matches_an_independent_composition():
    _, layer = make()
    train_targets(layer)
    x = torch.randn(2, 19, D, dtype=torch.float64)
    pos = packed_positions([[7, 12], [3, 9]], 19, pad_left=[False, True])
    out = layer(x, position_ids=pos)
    z = F.silu(layer.gate_proj(x)) * layer.up_proj(x)
    v = per_segment_conv(x, layer.ttt.conv_weight, pos, 4) @ layer.ttt.target_weight.T
    ref = layer.down_proj(z) + inplace_ttt_reference(z, v, None, 0.5, 4, position_ids=pos)
    valid = pos >= 0
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-10, atol=1e-10)


def test_gradient_reaches_the_new_parameters():
    _, layer = make(dtype=torch.float32)
    x = torch.randn(2, 12, D)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    layer(x).pow(2).mean().backward()
    g = {n: p.grad for n, p in layer.named_parameters()}
    assert torch.isfinite(g["ttt.conv_weight"]).all() and g["ttt.conv_weight"].abs().sum() > 0
    opt.step()
    opt.zero_grad()
    layer(x).pow(2).mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_single_chunk_sequences_leave_ttt_inert():
    """Nothing precedes chunk 0: with one chunk per sequence the targets get no gradient."""
    _, layer = make()
    layer(torch.randn(2, 4, D, dtype=torch.float64)).sum().backward()
    assert layer.ttt.conv_weight.grad.abs().sum() == 0


def test_causal():
    _, layer = make()
    train_targets(layer)
    x = torch.randn(1, 14, D, dtype=torch.float64)
    out = layer(x)
    for t in range(14):
        x2 = x.clone()
        x2[0, t] += 1.0
        assert torch.equal(layer(x2)[0, :t], out[0, :t])


def test_packed_rows_equal_documents_alone():
    _, layer = make()
    train_targets(layer)
    lengths = [9, 2, 13]
    docs = [torch.randn(1, n, D, dtype=torch.float64) for n in lengths]
    packed = layer(torch.cat(docs, 1), position_ids=packed_positions([lengths], sum(lengths)))
    alone = torch.cat([layer(d) for d in docs], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-12, atol=1e-12)


def test_token_embedding_target():
    _, layer = make(TTTConfig(layers=[0], chunk_size=4, ttt_lr=0.5, target_source="token_embeddings"))
    train_targets(layer)
    x, emb = torch.randn(2, 12, D, dtype=torch.float64), torch.randn(2, 12, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass target_source"):
        layer(x)
    out = layer(x, target_source=emb)
    z = F.silu(layer.gate_proj(x)) * layer.up_proj(x)
    v = per_segment_conv(emb, layer.ttt.conv_weight, torch.arange(12).expand(2, 12), 4) @ layer.ttt.target_weight.T
    torch.testing.assert_close(out, layer.down_proj(z) + inplace_ttt_reference(z, v, None, 0.5, 4))


def test_clip_tau_is_an_inference_switch():
    _, layer = make()
    train_targets(layer)
    x = torch.randn(1, 12, D, dtype=torch.float64)
    free = layer(x)
    layer.config.clip_tau = 1e-9
    clipped = layer(x)
    assert not torch.allclose(free, clipped)
    layer.config.clip_tau = None
    torch.testing.assert_close(layer(x), free, rtol=0, atol=0)


def test_bf16_layer_runs_and_keeps_the_warm_start():
    mlp, layer = make(dtype=torch.bfloat16)
    x = torch.randn(2, 9, D, dtype=torch.bfloat16)
    assert torch.equal(layer(x), mlp(x))


def test_other_layouts_through_a_spec():
    class Fused(nn.Module):  # Moshi-style: one input projection holding gate and up
        def __init__(self):
            super().__init__()
            self.linear_in = nn.Linear(D, 2 * H, bias=False)
            self.linear_out = nn.Linear(H, D, bias=False)
            self.activation = F.silu  # a plain function, not a module

        def forward(self, x):
            g, u = self.linear_in(x).chunk(2, -1)
            return self.linear_out(self.activation(g) * u)

    class FusedSpec(GatedMLPSpec):
        def part_names(self):
            return ("linear_in", "linear_out", "activation")

        def hidden(self, mlp, x):
            g, u = mlp.linear_in(x).chunk(2, -1)
            return mlp.activation(g) * u

    mlp = Fused()
    layer = InPlaceTTTMLP(mlp, TTTConfig(layers=[0], chunk_size=4), FusedSpec(down="linear_out"))
    x = torch.randn(2, 10, D)
    assert torch.equal(layer(x), mlp(x))


def test_refuses_a_non_gated_mlp():
    plain = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, D))
    with pytest.raises(ValueError, match=r"Sequential is not a gated MLP.*missing \['gate_proj', 'up_proj', 'down_proj', 'act_fn'\]"):
        InPlaceTTTMLP(plain, TTTConfig())


def test_trains_under_bf16_autocast():
    """Mixed precision: matmuls in bf16, the fast-weight sum still fp32, gradients finite."""
    _, layer = make(dtype=torch.float32)
    train_targets(layer)
    x = torch.randn(2, 16, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), rtol=0.05, atol=0.05)
    out.float().pow(2).mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_non_finite_padding_stays_out_of_real_tokens():
    """Hidden states at padded positions can be NaN (fully masked attention rows)."""
    _, layer = make()
    train_targets(layer)
    x = torch.randn(1, 10, D, dtype=torch.float64)
    x[0, :2] = float("nan")
    pos = torch.tensor([[-1, -1, 0, 1, 2, 3, 4, 5, 6, 7]])
    out = layer(x, position_ids=pos)
    assert out[0, 2:].isfinite().all()
    torch.testing.assert_close(out[0, 2:], layer(x[:, 2:])[0], rtol=1e-10, atol=1e-10)


def test_stats_report_how_far_the_fast_weight_moved():
    _, layer = make()
    train_targets(layer)
    layer.record_stats = True
    layer(torch.randn(2, 12, D, dtype=torch.float64))
    assert layer.last_stats["fast_ratio"] > 0 and layer.last_stats["clipped_share"] == 0
    layer.config.clip_tau = 1e-9
    layer(torch.randn(2, 12, D, dtype=torch.float64))
    assert layer.last_stats["clipped_share"] == 1.0


# the target generator's start and its ablations -------------------------------------------------

VARIANTS = {
    "identity": dict(target_init="identity"),
    "diagonal": dict(target_init="diagonal", target_init_std=0.3),
    "no convolution": dict(target_conv=False),
    "no projection": dict(target_projection=False),
}


def variant(name, **extra):
    return make(TTTConfig(layers=[0], chunk_size=4, ttt_lr=0.5, **VARIANTS[name], **extra))


@pytest.mark.parametrize("name", VARIANTS)
def test_every_target_variant_starts_exact_and_matches_an_independent_composition(name):
    mlp, layer = variant(name)
    x = torch.randn(2, 19, D, dtype=torch.float64)
    pos = packed_positions([[7, 12], [3, 9]], 19, pad_left=[False, True])
    valid = pos >= 0
    assert torch.equal(layer(x, position_ids=pos)[valid], mlp(x)[valid])  # V = 0: the pretrained MLP
    assert layer.ttt.starts_at_zero() and not layer.ttt.blocks_gradient()
    train_targets(layer)
    assert not layer.ttt.starts_at_zero()
    z = F.silu(layer.gate_proj(x)) * layer.up_proj(x)
    conv = x if layer.ttt.conv_weight is None else per_segment_conv(x, layer.ttt.conv_weight, pos, 4)
    v = conv if layer.ttt.target_weight is None else conv @ layer.ttt.target_weight.T
    ref = layer.down_proj(z) + inplace_ttt_reference(z, v, None, 0.5, 4, position_ids=pos)
    torch.testing.assert_close(layer(x, position_ids=pos)[valid], ref[valid], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "name, params",
    [
        ("identity", {"ttt.conv_weight", "ttt.target_weight"}),
        ("no convolution", {"ttt.target_weight"}),
        ("no projection", {"ttt.conv_weight"}),
    ],
)
def test_each_variant_has_its_parameters_and_gradient_at_the_first_backward(name, params):
    _, layer = variant(name)
    assert {n for n, _ in layer.named_parameters() if n.startswith("ttt.")} == params
    layer(torch.randn(2, 12, D, dtype=torch.float64)).pow(2).mean().backward()
    for n in params:  # the factor that starts at zero (or the only one) is pulled at once
        grad = dict(layer.named_parameters())[n].grad
        if n == "ttt.conv_weight" or name == "no convolution":
            assert grad is not None and grad.abs().sum() > 0, n


def test_the_releases_diagonal_start():
    """The authors' init: a zero convolution and a random diagonal W_target of the given std; the
    convolution's first gradient scales with the diagonal (an identity pulls it 1/std harder)."""
    torch.manual_seed(0)
    mlp = GatedMLP(256, 32).double()
    layer = InPlaceTTTMLP(mlp, TTTConfig(layers=[0], chunk_size=4, target_init="diagonal", target_init_std=0.02))
    w = layer.ttt.target_weight.detach()
    off = w - torch.diag(w.diagonal())
    assert torch.equal(off, torch.zeros_like(off)) and not layer.ttt.conv_weight.any()
    assert 0.018 < float(w.diagonal().std()) < 0.022 and abs(float(w.diagonal().mean())) < 0.004
    x = torch.randn(1, 12, 256, dtype=torch.float64)
    layer(x).pow(2).mean().backward()
    grad_diag = layer.ttt.conv_weight.grad.clone()
    identity = InPlaceTTTMLP(mlp, TTTConfig(layers=[0], chunk_size=4, target_init="identity"))
    identity(x).pow(2).mean().backward()
    # dL/dconv[f] = W_target[f, f] * (identity's dL/dconv[f]) for a diagonal W_target
    torch.testing.assert_close(grad_diag, identity.ttt.conv_weight.grad * w.diagonal()[:, None], rtol=1e-10, atol=1e-14)
