import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


class GatedMLP(nn.Module):
    """A Llama-style gated MLP, standing in for any model's MLP."""

    def __init__(self, d: int, h: int, act: nn.Module | None = None, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(d, h, bias=bias)
        self.up_proj = nn.Linear(d, h, bias=bias)
        self.down_proj = nn.Linear(h, d, bias=bias)
        self.act_fn = act if act is not None else nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@pytest.fixture
def no_hang():
    """Fail a test that blocks (reading a FIFO, say) after 20 s instead of hanging the suite."""
    import signal

    def timed_out(signum, frame):
        raise TimeoutError("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def packed_positions(lengths_per_row, total, pad_left=None):
    """`[B, total]` position_ids: each row holds documents of the given lengths, then padding (-1).

    `pad_left[b]` pads the start of row b instead of the end.
    """
    rows = []
    for b, lengths in enumerate(lengths_per_row):
        row = [p for n in lengths for p in range(n)]
        pad = [-1] * (total - len(row))
        rows.append(pad + row if pad_left and pad_left[b] else row + pad)
    return torch.tensor(rows)


def segment_lists(pos, C):
    """Per row, the column lists of each (document, chunk) segment, by a plain loop over tokens."""
    out = []
    for row in pos.tolist():
        segs, prev, key = [], None, None
        for t, p in enumerate(row):
            if p < 0:
                continue
            new_doc = p == 0 or (prev is not None and p != prev + 1)
            doc = (key[0] + 1 if new_doc else key[0]) if key else 0
            if key != (doc, p // C):
                key = (doc, p // C)
                segs.append([])
            segs[-1].append(t)
            prev = p
        out.append(segs)
    return out


def per_segment_conv(x, weight, pos, C):
    """Reference: cut every (document, chunk) segment out and convolve it alone, zero-padded."""
    y = torch.zeros_like(x)
    K = weight.shape[1]
    for b, segs in enumerate(segment_lists(pos, C)):
        for cols in segs:
            piece = x[b, cols].T[None]  # [1, F, n]
            y[b, cols] = F.conv1d(piece, weight[:, None, :], padding=K // 2, groups=x.shape[-1])[0].T
    return y


def perturb_targets(layer, conv_std: float = 0.5, target_std: float = 0.3, generator=None):
    """Give a layer's target generator non-trivial weights, as after some training (whichever
    of the convolution and `W_target` it has)."""
    with torch.no_grad():
        if layer.ttt.conv_weight is not None:
            layer.ttt.conv_weight.copy_(torch.randn(layer.ttt.conv_weight.shape, generator=generator, dtype=layer.ttt.conv_weight.dtype) * conv_std)
        if layer.ttt.target_weight is not None:
            w = layer.ttt.target_weight
            w.add_(torch.randn(w.shape, generator=generator, dtype=w.dtype) * target_std)
