"""`inplace_ttt.adapters`, the old name of `inplace_ttt.families`, still imports (with a FutureWarning)
and hands out the same objects; so does the old per-layer `clip_tau` assignment."""

import importlib
import sys

import pytest

import inplace_ttt
from inplace_ttt.families import family_of
from inplace_ttt.families.hf import from_pretrained, load_causal_lm
from tests.tiny_hf import converted


def test_the_old_module_names_import_what_moved():
    for name in [m for m in sys.modules if m.startswith("inplace_ttt.adapters")]:
        del sys.modules[name]
    with pytest.warns(FutureWarning, match="inplace_ttt.adapters is now inplace_ttt.families"):
        adapters = importlib.import_module("inplace_ttt.adapters")
    with pytest.warns(FutureWarning, match="inplace_ttt.adapters.hf is now inplace_ttt.families.hf"):
        hf = importlib.import_module("inplace_ttt.adapters.hf")
    assert hf.load_causal_lm is load_causal_lm and adapters.from_pretrained is from_pretrained
    assert adapters.adapter_of is family_of and adapters.set_clip_tau is inplace_ttt.set_clip_tau


def test_setting_clip_tau_on_a_layer_warns_and_sets_the_models_settings():
    model = converted()
    (_, first), (_, second) = inplace_ttt.ttt_layers(model)
    with pytest.warns(FutureWarning, match="set_clip_tau"):
        first.clip_tau = 1e-4
    assert second.clip_tau == 1e-4
    with pytest.raises(ValueError, match="clip_tau must be None or a finite number > 0"), pytest.warns(FutureWarning):
        first.clip_tau = -1.0
