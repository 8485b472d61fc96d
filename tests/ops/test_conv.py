"""The chunk-local convolution against `F.conv1d` run on each segment alone."""

import pytest
import torch

from inplace_ttt.ops import chunk_conv, find_segments
from tests.conftest import per_segment_conv


@pytest.mark.parametrize("K", [1, 3, 5, 7])
def test_matches_per_segment_conv1d(K):
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, -1, -1], [-1, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5]])
    x = torch.randn(2, 12, 4, dtype=torch.float64)
    w = torch.randn(4, K, dtype=torch.float64)
    seg = find_segments(pos, 2, 12, 3, x.device)
    y = chunk_conv(x, w, seg.seg_key)
    ref = per_segment_conv(x, w, pos, 3)
    valid = pos >= 0
    torch.testing.assert_close(y[valid], ref[valid], rtol=1e-12, atol=1e-12)


def test_looks_ahead_inside_a_chunk_but_never_past_it():
    x = torch.zeros(1, 8, 1, dtype=torch.float64)
    x[0, 5] = 1.0  # chunk 1 (C=4) covers columns 4..7
    w = torch.ones(1, 5, dtype=torch.float64)
    y = chunk_conv(x, w, find_segments(None, 1, 8, 4, x.device).seg_key)
    assert y[0, :, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_gradcheck():
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, -1], [2, 3, 4, 5, 6, 7, 8, 9]])
    x = torch.randn(2, 8, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    key = find_segments(pos, 2, 8, 3, x.device).seg_key
    assert torch.autograd.gradcheck(lambda x, w: chunk_conv(x, w, key), (x, w))


def test_rejects_even_kernels():
    with pytest.raises(ValueError, match="K odd"):
        chunk_conv(torch.zeros(1, 3, 2), torch.zeros(2, 4), torch.zeros(1, 3, dtype=torch.long))
