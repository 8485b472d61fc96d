"""Moshi's files in and out: moshi's model.safetensors beside our ttt.safetensors, safetensors only."""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: no torch.compile on CPU

import pytest
import torch

pytest.importorskip("moshi")
from safetensors.torch import save_file  # noqa: E402

from inplace_ttt import TTTConfig, convert, ttt_layers  # noqa: E402
from inplace_ttt.families.moshi import MoshiTTTGating, load_moshi, save_ttt  # noqa: E402
from tests.tiny_moshi import TINY, active_targets, logits, random_codes, tiny_lm, write_tiny_checkpoint  # noqa: E402


def test_moshi_loader_then_convert_then_save_and_load(tmp_path):
    original = write_tiny_checkpoint(tmp_path / "model.safetensors")
    lm = load_moshi(tmp_path / "model.safetensors", TINY, config=TTTConfig(layers=[0, 2], chunk_size=4), dtype=torch.float32)
    codes = random_codes(lm, 2, 12)
    ref = logits(original, codes)
    out = logits(lm, codes)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])  # exact warm start through moshi's loader
    active_targets(lm)  # stands in for training
    with torch.no_grad():
        lm.transformer.layers[0].gating.linear_out.weight.mul_(1.1)  # trained base weights travel too
    trained = logits(lm, codes)
    save_ttt(lm, tmp_path / "run")
    loaded = load_moshi(tmp_path / "run" / "model.safetensors", TINY, ttt_file=tmp_path / "run" / "ttt.safetensors", dtype=torch.float32)
    again = logits(loaded, codes)
    assert torch.equal(again[0], trained[0]) and torch.equal(again[1], trained[1])
    assert loaded.inplace_ttt["layers"] == [0, 2] and loaded.inplace_ttt["chunk_size"] == 4
    clipped = load_moshi(tmp_path / "run" / "model.safetensors", TINY, ttt_file=tmp_path / "run" / "ttt.safetensors", dtype=torch.float32, clip_tau=1e-5)
    assert all(layer.clip_tau == 1e-5 for _, layer in ttt_layers(clipped))


def test_rope_scaling_given_at_load_replaces_the_saved_one(tmp_path):
    write_tiny_checkpoint(tmp_path / "model.safetensors")
    saved = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16}
    lm = load_moshi(tmp_path / "model.safetensors", TINY, config=TTTConfig(layers=[0], chunk_size=4), dtype=torch.float32, rope_scaling=saved)
    save_ttt(lm, tmp_path / "run")
    run = tmp_path / "run"
    kept = load_moshi(run / "model.safetensors", TINY, ttt_file=run / "ttt.safetensors", dtype=torch.float32)
    assert kept.inplace_ttt["rope_scaling"]["factor"] == 2.0 and kept.transformer.rope.attention_factor == lm.transformer.rope.attention_factor
    longer = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    loaded = load_moshi(run / "model.safetensors", TINY, ttt_file=run / "ttt.safetensors", dtype=torch.float32, rope_scaling=longer)
    assert loaded.inplace_ttt["rope_scaling"]["factor"] == 4.0 and loaded.inplace_ttt["chunk_size"] == 4
    assert loaded.transformer.rope.attention_factor > lm.transformer.rope.attention_factor


def test_bad_input_is_refused_with_the_field_named(tmp_path):
    lm = tiny_lm()
    with pytest.raises(ValueError, match="outside the model"):
        convert(lm, TTTConfig(layers=[5]))
    with pytest.raises(ValueError, match="rope_scaling.factor"):
        convert(lm, TTTConfig(layers=[0]), rope_scaling={"rope_type": "yarn", "factor": 0.5, "original_max_position_embeddings": 64})
    with pytest.raises(ValueError, match="unknown rope_scaling keys"):
        convert(lm, TTTConfig(layers=[0]), rope_scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64})
    assert not any(isinstance(m, MoshiTTTGating) for m in lm.modules())  # nothing changed
    with lm.streaming(1):
        with pytest.raises(ValueError, match="before streaming"):
            convert(lm, TTTConfig(layers=[0]))
    convert(lm, TTTConfig(layers=[0]))
    with pytest.raises(ValueError, match="already"):
        convert(lm, TTTConfig(layers=[1]))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="no In-Place TTT settings"):
        load_moshi(tmp_path / "bad.safetensors", TINY, ttt_file=tmp_path / "bad.safetensors")


def test_load_moshi_reads_whole_safetensors_files_only(tmp_path):
    """moshi's loader would `torch.load` (unpickle) any other suffix; a file cut short would fail deep inside it."""
    from inplace_ttt.families.moshi import load_moshi

    (tmp_path / "model.pt").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"model.pt is not a safetensors file \(.safetensors, .sft, .sfts\); only safetensors weights are read"):
        load_moshi(tmp_path / "model.pt", TINY, config=TTTConfig(layers=[0], chunk_size=4))
    write_tiny_checkpoint(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file \(.*\): it is empty, cut short or corrupt"):
        load_moshi(tmp_path / "model.safetensors", TINY, config=TTTConfig(layers=[0], chunk_size=4))


def test_ttt_weights_of_another_shape_are_named(tmp_path):
    """A ttt.safetensors whose tensors have the right names but not the model's shapes (a copy_ error before)."""
    import json

    from safetensors.torch import load_file

    write_tiny_checkpoint(tmp_path / "model.safetensors")
    lm = load_moshi(tmp_path / "model.safetensors", TINY, config=TTTConfig(layers=[0, 2], chunk_size=4), dtype=torch.float32)
    save_ttt(lm, tmp_path / "saved")
    ttt_file = tmp_path / "saved" / "ttt.safetensors"
    with open(ttt_file, "rb") as f:  # keep the settings in the metadata, change one tensor's shape
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    weights = load_file(str(ttt_file))
    name = sorted(weights)[0]
    weights[name] = torch.zeros(*weights[name].shape[:-1], weights[name].shape[-1] + 1)
    save_file(weights, str(ttt_file), metadata=header["__metadata__"])
    with pytest.raises(ValueError, match=rf"TTT weights of another shape than the model's: {name} "):
        load_moshi(tmp_path / "saved" / "model.safetensors", TINY, ttt_file=ttt_file, dtype=torch.float32)


def test_weights_that_do_not_fit_the_settings_raise_one_error_naming_the_first_problem(tmp_path):
    """moshi's three ways of saying the weights and LMModel settings do not fit (load_state_dict's size
    mismatch and missing keys, LMModel's unknown argument) are one `LMLoadError`, a ValueError, whose
    message names the first problem (load_state_dict's own first line names none)."""
    from inplace_ttt.families.moshi import LMLoadError, load_base, moshi_lm

    path = tmp_path / "model.safetensors"
    write_tiny_checkpoint(path)
    cases = [
        ({**TINY, "dim": TINY["dim"] * 2}, r"^size mismatch for emb\.0\.weight: copying a param with shape torch\.Size\(\[33, 32\]\) .* \(and \d+ more\)$"),
        ({**TINY, "num_layers": TINY["num_layers"] + 1}, rf'^Missing key\(s\) in state_dict: "transformer\.layers\.{TINY["num_layers"]}\.'),
        ({**TINY, "bogus": 1}, r"unexpected keyword argument 'bogus'$"),
    ]
    for lm_kwargs, message in cases:
        with pytest.raises(LMLoadError, match=message):
            load_base(path, lm_kwargs)
        with pytest.raises(LMLoadError, match=message):
            load_moshi(path, lm_kwargs, config=TTTConfig(layers=[0], chunk_size=4))
    assert issubclass(LMLoadError, ValueError)
    with pytest.raises(LMLoadError, match=r"unexpected keyword argument 'bogus'$"):
        moshi_lm(None, {**TINY, "bogus": 1}, device="meta")  # settings alone, no weights
    assert moshi_lm(path, TINY, dtype=torch.float32).dim == TINY["dim"]
