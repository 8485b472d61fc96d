"""`UpdateRecord`: the clip-factor numbers and the one-line warning when clipping removes nearly all of the update."""

import torch

from inplace_ttt.clipping import NEARLY_ALL_REMOVED, UpdateRecord, summary

F64 = torch.float64


def record(factors, tau=1e-5, norms=None):
    factors = torch.tensor(factors, dtype=F64)
    norms = torch.full_like(factors, 2.0) if norms is None else torch.tensor(norms, dtype=F64)
    return UpdateRecord(layer=3, norms=norms, factors=factors, tau=tau, lr=3.0, w0_norm=12.0)


def test_warns_only_when_clipping_keeps_nearly_nothing():
    assert record([NEARLY_ALL_REMOVED / 2] * 4).warning() is not None
    assert record([1.0, 0.0, 0.0, 0.0]).warning() is None  # mean 0.25: a quarter kept is not "nearly nothing"
    assert record([1.0] * 4, tau=None).warning() is None  # clipping off
    assert UpdateRecord(3, torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64), 1e-5, 3.0, 12.0).warning() is None  # no update


def test_the_warning_names_the_layer_the_share_and_the_settings_to_change():
    text = record([1e-6, 2e-6, 3e-6], norms=[1.0, 2.0, 3.0]).warning()
    assert "TTT layer 3" in text and "2e-06" in text and "clip_tau" in text and "clip_mode: relative" in text
    assert "to 2 " in text  # the median norm: clipping there keeps half the updates whole


def test_numbers_read_the_updates():
    r = record([0.5, 1.0, 1.0], norms=[4.0, 1.0, 2.0])
    assert r.updates == 3 and r.mean_factor() == (0.5 + 1 + 1) / 3
    assert r.quantiles((0.0, 1.0)) == [0.5, 1.0]
    torch.testing.assert_close(r.relative_norms(), torch.tensor([4.0, 1.0, 2.0], dtype=F64) * 3.0 / 12.0)
    line = summary([r])
    assert "3 chunk updates" in line and "tau 1e-05" in line
    assert "no fast-weight update" in summary([])
