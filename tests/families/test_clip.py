"""`clip_report`: what clipping keeps of a converted model's updates on a batch, and the warning
when it removes nearly all of them (forced with a tiny tau; not raised otherwise)."""

import warnings

import pytest
import torch

import inplace_ttt
from inplace_ttt.families.clip import clip_report
from tests.tiny_hf import converted

IDS = torch.randint(3, 90, (2, 20), generator=torch.Generator().manual_seed(0))


def model():
    return converted("llama").double()


def test_clipping_off_keeps_every_update():
    report = clip_report(model(), IDS)
    assert report.mean_factor() == 1.0 and not report.warnings()
    assert sum(r.updates for r in report.records) == 2 * 2 * 4  # 2 TTT layers x 2 rows x 4 folded chunks of 4 tokens
    assert all(r.tau is None for r in report.records)


def test_factors_are_the_share_tau_leaves_of_each_update():
    m = model()
    norms = clip_report(m, IDS).records[0].norms  # layer 0: its inputs do not depend on any clipping
    tau = float(norms.median())
    factors = clip_report(m, IDS, tau).records[0].factors
    torch.testing.assert_close(factors, (tau / norms).clamp(max=1.0), rtol=1e-12, atol=0)
    assert m.config.inplace_ttt["clip_tau"] is None  # the setting tried is restored


def test_relative_clipping_bounds_the_share_of_w0_one_chunk_moves():
    m = model()
    layer = dict(inplace_ttt.ttt_layers(m))[0]
    record = clip_report(m, IDS).records[0]
    tau = float(record.relative_norms().median())
    kept = clip_report(m, IDS, tau, "relative").records[0]
    expected = (tau * layer.down.weight.norm().item() / (layer.ttt_lr * record.norms)).clamp(max=1.0)
    torch.testing.assert_close(kept.factors, expected, rtol=1e-12, atol=0)
    assert float((kept.factors * record.relative_norms()).max()) <= tau * (1 + 1e-12)  # eta ||c dW|| / ||W0|| <= tau


def test_a_tiny_tau_is_reported_and_warned_once_per_setting():
    m = model()
    inplace_ttt.set_clip_tau(m, 1e-9)
    with pytest.warns(RuntimeWarning, match="clipping keeps .* TTT is effectively off"):
        m(input_ids=IDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(input_ids=IDS)  # the same setting: checked already, no host sync, no warning
    inplace_ttt.set_clip_tau(m, 2e-9)
    with pytest.warns(RuntimeWarning, match="clipping keeps"):
        report = clip_report(m, IDS)
    assert report.mean_factor() < 1e-6 and len(report.warnings()) == 2


@pytest.mark.parametrize("tau", [None, 1e6])
def test_no_warning_when_clipping_keeps_the_updates(tau):
    m = model()
    inplace_ttt.set_clip_tau(m, tau)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(input_ids=IDS)
    assert not clip_report(m, IDS).warnings()


def test_streaming_prefill_is_checked_too():
    """`ittt eval` reads long inputs through the cache: the first prefill after clipping is set is checked."""
    m = model()
    inplace_ttt.set_clip_tau(m, 1e-9)
    with pytest.warns(RuntimeWarning, match="clipping keeps"):
        m(input_ids=IDS, use_cache=True)
