"""The ``--model`` mini-language of `ittt moshi-eval`."""

from pathlib import Path

import pytest

from inplace_ttt.eval.moshi.models import ModelSpec


@pytest.mark.parametrize(
    "spec,message",
    [
        ("base", "expected NAME=PATH"),
        ("base=m.safetensors,tau=1", "unknown option 'tau=1'"),
        ("base=m.safetensors,clip_tau=small", "take numbers"),
    ],
)
def test_a_bad_model_spec_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.parse(spec)


def test_a_folder_brings_its_ttt_weights_unless_told_otherwise(tmp_path):
    (tmp_path / "ttt.safetensors").touch()
    spec = ModelSpec.parse(f"ttt={tmp_path},clip_tau=0.5,yarn=4")
    assert spec == ModelSpec("ttt", tmp_path / "model.safetensors", tmp_path / "ttt.safetensors", 0.5, 4.0)
    assert ModelSpec.parse(f"base={tmp_path},ttt=none").ttt is None
    assert ModelSpec.parse(f"other={tmp_path},ttt=x.safetensors").ttt == Path("x.safetensors")
